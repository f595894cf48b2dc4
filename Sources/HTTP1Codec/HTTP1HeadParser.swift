#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore

/// Finds and parses HTTP/1.1 message heads (RFC 9112) in a byte stream, strictly: whatever two parsers could read
/// differently is refused, not guessed at. It refuses bare LF and CR, obsolete line folding, whitespace before a
/// field's colon, control characters and NUL anywhere, a start line of the wrong shape, and heads past its
/// limits. Empty lines before a start line are skipped (RFC 9112 §2.2).
///
/// Give it the same buffer again as more bytes arrive (appended after the reader index it left): it resumes where
/// it stopped, so a head that comes a byte at a time is still scanned once. A complete head is taken off the
/// buffer (its reader index moves past it); what follows (a body, the next request) stays.
public struct HTTP1HeadParser: Sendable {
    public struct Limits: Sendable, Hashable {
        /// Bytes in the start line, its CR included (and any empty lines before it).
        public var startLine: Int
        /// Bytes after the start line, to the end of the head.
        public var headerBytes: Int
        /// Field lines.
        public var fields: Int

        public init(startLine: Int = 8 * 1024, headerBytes: Int = 64 * 1024, fields: Int = 200) {
            self.startLine = startLine
            self.headerBytes = headerBytes
            self.fields = fields
        }
    }

    public enum Outcome: Sendable {
        /// No complete head yet, and nothing wrong so far.
        case needMore
        case head(HTTP1Head)
        case invalid(HTTP1ParseError)
    }

    public let kind: HTTP1Head.Kind
    public let limits: Limits

    // Progress through the head being received, as offsets from the buffer's reader index.
    /// Bytes already searched for line ends.
    private var scanned = 0
    /// Where the line being received starts.
    private var lineStart = 0
    /// Where the head starts (after empty lines before a request line).
    private var headStart = 0
    private var sawStartLine = false
    private var fieldLines = 0

    public init(kind: HTTP1Head.Kind, limits: Limits = Limits()) {
        self.kind = kind
        self.limits = limits
        if kind == .trailers { sawStartLine = true }
    }

    /// Whether part of a head has been received (bytes other than empty lines).
    public var isInsideHead: Bool { sawStartLine || scanned > headStart }

    /// Forgets a head in progress: the next bytes start a new one.
    public mutating func reset() {
        scanned = 0
        lineStart = 0
        headStart = 0
        sawStartLine = false
        fieldLines = 0
        firstFieldStart = 0
        sawStartLine = kind == .trailers
    }

    public mutating func parse(_ buffer: inout ByteBuffer) -> Outcome {
        let found: Result<Int?, HTTP1ParseError> = buffer.withUnsafeReadableBytes { findEnd($0) }
        switch found {
        case .failure(let error):
            return .invalid(error)
        case .success(nil):
            return .needMore
        case .success(let end?):
            let start = headStart
            reset()
            let outcome = buffer.withUnsafeReadableBytes { all in
                Self.index(UnsafeRawBufferPointer(rebasing: all[start..<end]), kind: kind)
            }
            switch outcome {
            case .failure(let error):
                return .invalid(error)
            case .success(let parts):
                let bytes = buffer.getSlice(at: buffer.readerIndex + start, length: end - start)!
                buffer.moveReaderIndex(forwardBy: end)
                return .head(parts.head(bytes: bytes, kind: kind))
            }
        }
    }

    /// Searches on for the empty line that ends the head; returns where the head ends (after that line), or nil
    /// when it has not come yet. Checks the limits on the way.
    private mutating func findEnd(_ bytes: UnsafeRawBufferPointer) -> Result<Int?, HTTP1ParseError> {
        var i = scanned
        let count = bytes.count
        while i < count {
            guard let base = bytes.baseAddress, let found = memchr(base + i, 0x0A, count - i) else { break }
            let lf = base.distance(to: UnsafeRawPointer(found))
            let crlf = lf > lineStart && bytes[lf - 1] == 0x0D
            let contentEnd = crlf ? lf - 1 : lf
            if contentEnd == lineStart {
                // An empty line: before a request line it is skipped, after a start line it ends the head. Only
                // CRLF makes one: a bare LF could be read as a line end by one parser and not by another.
                guard crlf else { return .failure(.invalidLineEnding) }
                if sawStartLine {
                    let end = lf + 1
                    if end - firstFieldStart > limits.headerBytes { return .failure(.headerBlockTooLarge(limit: limits.headerBytes)) }
                    scanned = end
                    return .success(end)
                }
                headStart = lf + 1
                if headStart > limits.startLine { return .failure(.startLineTooLong(limit: limits.startLine)) }
            } else if !sawStartLine {
                sawStartLine = true
                if lf - headStart > limits.startLine { return .failure(.startLineTooLong(limit: limits.startLine)) }
                firstFieldStart = lf + 1
            } else {
                fieldLines += 1
                if fieldLines > limits.fields { return .failure(.tooManyFields(limit: limits.fields)) }
                if lf + 1 - firstFieldStart > limits.headerBytes {
                    return .failure(.headerBlockTooLarge(limit: limits.headerBytes))
                }
            }
            lineStart = lf + 1
            i = lf + 1
        }
        scanned = count
        // A line still coming counts too: a head that never ends is refused once it is past a limit.
        if !sawStartLine {
            if count - headStart > limits.startLine { return .failure(.startLineTooLong(limit: limits.startLine)) }
        } else if count - firstFieldStart > limits.headerBytes {
            return .failure(.headerBlockTooLarge(limit: limits.headerBytes))
        }
        return .success(nil)
    }

    /// Where the field lines start, once the start line has been found.
    private var firstFieldStart = 0

    // MARK: the parts of a complete head

    struct Parts {
        var version: (UInt8, UInt8) = (0, 0)
        var methodEnd: UInt32 = 0
        var targetStart: UInt32 = 0
        var targetEnd: UInt32 = 0
        var status = 0
        var reasonStart: UInt32 = 0
        var reasonEnd: UInt32 = 0
        var fieldsStart: UInt32 = 0
        var fields: [HTTP1Head.Field] = []

        func head(bytes: ByteBuffer, kind: HTTP1Head.Kind) -> HTTP1Head {
            HTTP1Head(
                kind: kind, bytes: bytes, version: version, methodEnd: methodEnd, targetStart: targetStart,
                targetEnd: targetEnd, status: status, reasonStart: reasonStart, reasonEnd: reasonEnd,
                fieldsStart: fieldsStart, fields: fields)
        }
    }

    /// Checks every byte of a complete head (it ends with CRLF CRLF, `findEnd` made sure) and finds its parts.
    static func index(_ head: UnsafeRawBufferPointer, kind: HTTP1Head.Kind) -> Result<Parts, HTTP1ParseError> {
        ByteClass.table.withUnsafeBufferPointer { classes in index(head, kind: kind, classes: classes) }
    }

    /// `index`, with the byte classes at hand. Every loop over a class stops at the CR that ends the head at the
    /// latest (CR is in no class), so only fixed-offset reads check the head's length.
    private static func index(
        _ head: UnsafeRawBufferPointer, kind: HTTP1Head.Kind, classes: UnsafeBufferPointer<UInt8>
    ) -> Result<Parts, HTTP1ParseError> {
        var parts = Parts()
        let count = head.count
        @inline(__always) func at(_ i: Int) -> UInt8 { i < count ? head[i] : 0 }
        @inline(__always) func isClass(_ i: Int, _ mask: UInt8) -> Bool { classes[Int(head[i])] & mask != 0 }
        var i = 0
        switch kind {
        case .request:
            while isClass(i, ByteClass.token) { i += 1 }
            guard i > 0, head[i] == space else { return .failure(.invalidMethod) }
            parts.methodEnd = UInt32(i)
            i += 1
            parts.targetStart = UInt32(i)
            i = skipVisibleASCII(head, from: i)
            while isClass(i, ByteClass.target) { i += 1 }
            guard i > Int(parts.targetStart), head[i] == space else { return .failure(.invalidTarget) }
            parts.targetEnd = UInt32(i)
            let isCONNECT = parts.methodEnd == 7 && memcmp(head.baseAddress!, "CONNECT", 7) == 0
            guard isWellFormedTarget(UnsafeRawBufferPointer(rebasing: head[Int(parts.targetStart)..<i]), connect: isCONNECT)
            else { return .failure(.invalidTarget) }
            i += 1
            guard let version = readVersion(head, at: i) else { return .failure(.invalidVersion) }
            parts.version = version
            i += 8
            guard at(i) == cr, at(i + 1) == lf else { return .failure(at(i) == cr || at(i) == lf ? .invalidLineEnding : .invalidVersion) }
            i += 2
        case .response:
            guard let version = readVersion(head, at: 0) else { return .failure(.invalidVersion) }
            parts.version = version
            i = 8
            guard at(i) == space, isDigit(at(i + 1)), isDigit(at(i + 2)), isDigit(at(i + 3)) else {
                return .failure(.invalidStatus)
            }
            parts.status = Int(at(i + 1) - zero) * 100 + Int(at(i + 2) - zero) * 10 + Int(at(i + 3) - zero)
            i += 4
            parts.reasonStart = UInt32(i)
            if at(i) == space {
                i += 1
                parts.reasonStart = UInt32(i)
                while isClass(i, ByteClass.value) { i += 1 }
            }
            parts.reasonEnd = UInt32(i)
            guard at(i) == cr, at(i + 1) == lf else {
                return .failure(at(i) == cr || at(i) == lf ? .invalidLineEnding : .invalidStatus)
            }
            i += 2
        case .trailers:
            break
        }
        parts.fieldsStart = UInt32(i)
        parts.fields.reserveCapacity(16)
        while true {
            let first = head[i]
            if first == cr {
                // The empty line: it must be the last line (where `findEnd` found the head's end).
                guard at(i + 1) == lf, i + 2 == count else { return .failure(.invalidLineEnding) }
                return .success(parts)
            }
            if first == space || first == tab { return .failure(.obsoleteLineFolding) }
            let nameStart = i
            while isClass(i, ByteClass.token) { i += 1 }
            guard i > nameStart, head[i] == colon else {
                return .failure(head[i] == lf && i == nameStart ? .invalidLineEnding : .invalidFieldName)
            }
            let nameEnd = i
            i += 1
            while isClass(i, ByteClass.whitespace) { i += 1 }
            let valueStart = i
            var valueEnd = i
            i = skipPlainValueBytes(head, from: i, valueEnd: &valueEnd)
            while true {
                let byteClass = classes[Int(head[i])]
                guard byteClass & ByteClass.value != 0 else { break }
                i += 1
                if byteClass & ByteClass.whitespace == 0 { valueEnd = i }
            }
            guard head[i] == cr else { return .failure(head[i] == lf ? .invalidLineEnding : .invalidFieldValue) }
            guard at(i + 1) == lf else { return .failure(.invalidLineEnding) }
            i += 2
            parts.fields.append(HTTP1Head.Field(
                nameStart: UInt32(nameStart), nameEnd: UInt32(nameEnd), valueStart: UInt32(valueStart),
                valueEnd: UInt32(valueEnd), lineEnd: UInt32(i)))
        }
    }

    // Eight bytes at a time: a head is mostly field values and targets of ordinary bytes, and a byte that needs a
    // closer look (the CR that ends the line, HTAB, a control character, DEL) stops the fast loop; the byte-by-byte
    // loop after it decides. Both stop before the head's end, which is CR LF.
    private static let ones: UInt64 = 0x0101_0101_0101_0101
    private static let highs: UInt64 = 0x8080_8080_8080_8080

    /// Whether any byte of `word` is below `limit` (at most 0x80).
    @inline(__always) private static func anyByte(of word: UInt64, below limit: UInt64) -> Bool {
        (word &- ones &* limit) & ~word & highs != 0
    }

    /// Whether any byte of `word` is `value`.
    @inline(__always) private static func anyByte(of word: UInt64, is value: UInt64) -> Bool {
        let diff = word ^ (ones &* value)
        return (diff &- ones) & ~diff & highs != 0
    }

    @inline(__always) private static func word(_ bytes: UnsafeRawBufferPointer, at i: Int) -> UInt64 {
        UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self))
    }

    /// Past a run of visible ASCII (0x21–0x7E), eight bytes at a time; the rest byte by byte.
    @inline(__always) static func skipVisibleASCII(_ bytes: UnsafeRawBufferPointer, from start: Int) -> Int {
        var i = start
        while i + 8 <= bytes.count {
            let word = word(bytes, at: i)
            if anyByte(of: word, below: 0x21) || word & highs != 0 || anyByte(of: word, is: 0x7F) { break }
            i += 8
        }
        return i
    }

    /// Past a run of a field value's ordinary bytes (SP, visible ASCII, obs-text; not HTAB), eight at a time,
    /// moving `valueEnd` past the last that is not a space.
    @inline(__always) static func skipPlainValueBytes(_ bytes: UnsafeRawBufferPointer, from start: Int, valueEnd: inout Int) -> Int {
        var i = start
        while i + 8 <= bytes.count {
            let word = word(bytes, at: i)
            if anyByte(of: word, below: 0x20) || anyByte(of: word, is: 0x7F) { break }
            if word >> 56 != UInt64(space) {
                valueEnd = i + 8
            } else {
                for k in stride(from: 6, through: 0, by: -1) where (word >> UInt64(8 * k)) & 0xFF != UInt64(space) {
                    valueEnd = i + k + 1
                    break
                }
            }
            i += 8
        }
        return i
    }

    /// Whether a request target has one of the four forms of RFC 9112 §3.2: origin-form (`/path?query`),
    /// asterisk-form (`*`), authority-form (`host:port`, CONNECT only) or absolute-form (`scheme://authority…`,
    /// any other method; `/path` or `?query` after the authority). The bytes are visible ASCII already.
    static func isWellFormedTarget(_ target: UnsafeRawBufferPointer, connect: Bool) -> Bool {
        if connect { return isAuthorityForm(target) }
        if target[0] == UInt8(ascii: "/") { return true }
        if target.count == 1 && target[0] == UInt8(ascii: "*") { return true }
        // The scheme: letters only. RFC 3986 allows digits, "+", "-" and "." after the first; llhttp does not, and
        // no scheme a proxy forwards has them.
        var i = 0
        while i < target.count && isLetter(target[i]) { i += 1 }
        guard i > 0 else { return false }
        guard i + 3 < target.count, target[i] == colon, target[i + 1] == UInt8(ascii: "/"),
            target[i + 2] == UInt8(ascii: "/")
        else { return false }
        i += 3
        let authorityStart = i
        var ats = 0
        while i < target.count && isAuthorityByte(target[i]) {
            if target[i] == UInt8(ascii: "@") { ats += 1 }
            i += 1
        }
        // One userinfo at most: with two `@`, parsers differ on where the host starts.
        guard i > authorityStart, ats <= 1 else { return false }
        return i == target.count || target[i] == UInt8(ascii: "/") || target[i] == UInt8(ascii: "?")
    }

    /// `host:port` (RFC 9110 §9.3.6): a registered name (unreserved and sub-delims, `%`) or a bracketed IPv6
    /// literal (hex digits, `:` and `.`), then a port of 1 to 5 digits. No userinfo.
    static func isAuthorityForm(_ target: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        if target.first == UInt8(ascii: "[") {
            i = 1
            while i < target.count && (isHexDigit(target[i]) || target[i] == colon || target[i] == UInt8(ascii: ".")) { i += 1 }
            guard i > 1, i < target.count, target[i] == UInt8(ascii: "]") else { return false }
            i += 1
        } else {
            while i < target.count && target[i] != colon && target[i] != UInt8(ascii: "@") && isAuthorityByte(target[i])
                && target[i] != UInt8(ascii: "[") && target[i] != UInt8(ascii: "]")
            {
                i += 1
            }
            guard i > 0 else { return false }
        }
        guard i < target.count, target[i] == colon else { return false }
        let port = target.count - i - 1
        return port >= 1 && port <= 5 && target[(i + 1)...].allSatisfy(isDigit)
    }

    /// `HTTP/1.1` or `HTTP/1.0` at `i`: the versions this codec speaks (HTTP/2 has a preface of its own, and
    /// nothing else is HTTP/1).
    private static func readVersion(_ bytes: UnsafeRawBufferPointer, at i: Int) -> (UInt8, UInt8)? {
        guard i + 8 <= bytes.count,
            bytes[i] == UInt8(ascii: "H"), bytes[i + 1] == UInt8(ascii: "T"), bytes[i + 2] == UInt8(ascii: "T"),
            bytes[i + 3] == UInt8(ascii: "P"), bytes[i + 4] == UInt8(ascii: "/"), bytes[i + 5] == UInt8(ascii: "1"),
            bytes[i + 6] == UInt8(ascii: "."), bytes[i + 7] == UInt8(ascii: "1") || bytes[i + 7] == UInt8(ascii: "0")
        else { return nil }
        return (1, bytes[i + 7] - zero)
    }
}

// MARK: byte classes (RFC 9110 §5.6.2, §5.5; RFC 9112 §3.2)

/// The classes of all 256 bytes as bits, for the loops over a whole head: one load and one test a byte.
enum ByteClass {
    /// tchar.
    static let token: UInt8 = 1
    /// A field value's byte (`isFieldValueByte`).
    static let value: UInt8 = 2
    /// A request target's byte (`isTargetByte`).
    static let target: UInt8 = 4
    /// SP or HTAB.
    static let whitespace: UInt8 = 8

    static let table: [UInt8] = (0...255).map { (byte: Int) -> UInt8 in
        let byte = UInt8(byte)
        var bits: UInt8 = 0
        if isTokenByte(byte) { bits |= token }
        if isFieldValueByte(byte) { bits |= value }
        if isTargetByte(byte) { bits |= target }
        if byte == space || byte == tab { bits |= whitespace }
        return bits
    }
}

let cr: UInt8 = 0x0D
let lf: UInt8 = 0x0A
let space: UInt8 = 0x20
let tab: UInt8 = 0x09
let colon: UInt8 = 0x3A
let zero: UInt8 = 0x30

@inline(__always) func isDigit(_ byte: UInt8) -> Bool { byte &- zero < 10 }

@inline(__always) func isHexDigit(_ byte: UInt8) -> Bool { isDigit(byte) || (byte | 0x20) &- UInt8(ascii: "a") < 6 }

@inline(__always) func isLetter(_ byte: UInt8) -> Bool { (byte | 0x20) &- UInt8(ascii: "a") < 26 }

/// An authority's bytes (RFC 3986 §3.2): userinfo, host (an IPv6 literal's brackets too) and port. Unreserved,
/// sub-delims, `:`, `@`, `%`, `[` and `]`.
@inline(__always) func isAuthorityByte(_ byte: UInt8) -> Bool {
    if isLetter(byte) || isDigit(byte) { return true }
    switch byte {
    case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "!"),
        UInt8(ascii: "$"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("), UInt8(ascii: ")"),
        UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: "="),
        UInt8(ascii: ":"), UInt8(ascii: "@"), UInt8(ascii: "%"), UInt8(ascii: "["), UInt8(ascii: "]"):
        return true
    default:
        return false
    }
}

/// tchar: `!#$%&'*+-.^_`|~`, digits and letters; as two 64-bit masks, so nothing is looked up in memory.
@inline(__always) func isTokenByte(_ byte: UInt8) -> Bool {
    let lowMask: UInt64 = 0x03FF_6CFA_0000_0000
    let highMask: UInt64 = 0x57FF_FFFF_C7FF_FFFE
    if byte < 64 { return (lowMask >> UInt64(byte)) & 1 == 1 }
    if byte < 128 { return (highMask >> UInt64(byte - 64)) & 1 == 1 }
    return false
}

/// A request target's bytes: visible ASCII only (RFC 3986; anything else is percent-encoded, and llhttp refuses
/// it too). No whitespace, no control characters.
@inline(__always) func isTargetByte(_ byte: UInt8) -> Bool {
    byte > space && byte < 0x7F
}

/// A field value's (and reason phrase's) bytes: HTAB, SP, visible ASCII and obs-text. No NUL, CR, LF or other
/// control characters.
@inline(__always) func isFieldValueByte(_ byte: UInt8) -> Bool {
    byte == tab || (byte >= space && byte != 0x7F)
}

import NIOCore

/// One HTTP/1.1 message head as it came off the wire, parsed in place: the head's bytes and, for each part the
/// proxy reads, where it lies in them. No `String` is made until one is asked for, so a head that is only looked
/// at and forwarded costs one array of offsets.
public struct HTTP1Head: Sendable {
    public enum Kind: Sendable, Hashable {
        case request
        case response
        /// The trailer section after a chunked body's last chunk: field lines only, no start line.
        case trailers
    }

    /// A field line: its name and its value (without the whitespace around it), as offsets into `bytes`.
    public struct Field: Sendable, Hashable {
        public var nameStart: UInt32
        public var nameEnd: UInt32
        public var valueStart: UInt32
        public var valueEnd: UInt32
        /// Where the whole line starts (its name) and ends (after its CRLF), for copying it as it is.
        public var lineEnd: UInt32
    }

    public let kind: Kind
    /// The head exactly: the start line through the empty line that ends it (empty lines before a request line
    /// are not part of it). Its reader index is 0.
    public let bytes: ByteBuffer
    /// `HTTP/1.1` or `HTTP/1.0`: (1, 1) or (1, 0).
    public let version: (major: UInt8, minor: UInt8)
    /// A request's method is `bytes[0..<methodEnd]`; its target is `bytes[targetStart..<targetEnd]`.
    let methodEnd: UInt32
    let targetStart: UInt32
    let targetEnd: UInt32
    /// A response's status code (three digits: 000–999; what is acceptable is the caller's to say).
    public let status: Int
    /// A response's reason phrase is `bytes[reasonStart..<reasonEnd]` (may be empty).
    let reasonStart: UInt32
    let reasonEnd: UInt32
    /// Where the field lines start (after the start line's CRLF).
    public let fieldsStart: UInt32
    public let fields: [Field]
    /// How its body was framed, set by the `HTTP1MessageDecoder` that decoded it (nil for a head parsed alone):
    /// whoever relays the message frames it the same way without reading the fields again.
    public internal(set) var bodyFraming: HTTP1BodyFraming?

    init(
        kind: Kind, bytes: ByteBuffer, version: (UInt8, UInt8), methodEnd: UInt32, targetStart: UInt32,
        targetEnd: UInt32, status: Int, reasonStart: UInt32, reasonEnd: UInt32, fieldsStart: UInt32, fields: [Field]
    ) {
        self.kind = kind
        self.bytes = bytes
        self.version = version
        self.methodEnd = methodEnd
        self.targetStart = targetStart
        self.targetEnd = targetEnd
        self.status = status
        self.reasonStart = reasonStart
        self.reasonEnd = reasonEnd
        self.fieldsStart = fieldsStart
        self.fields = fields
    }

    // MARK: reading parts

    public var method: String { string(0, methodEnd) }
    public var target: String { string(targetStart, targetEnd) }
    public var reason: String { string(reasonStart, reasonEnd) }

    public func name(_ index: Int) -> String { string(fields[index].nameStart, fields[index].nameEnd) }
    public func value(_ index: Int) -> String { string(fields[index].valueStart, fields[index].valueEnd) }

    /// Every field as (name, value) strings, in order.
    public var fieldStrings: [(name: String, value: String)] {
        fields.indices.map { (name($0), value($0)) }
    }

    private func string(_ start: UInt32, _ end: UInt32) -> String {
        bytes.getString(at: Int(start), length: Int(end - start)) ?? ""
    }

    /// Whether the method is exactly `method` (methods are case-sensitive).
    public func methodIs(_ method: StaticString) -> Bool {
        bytesEqual(0, methodEnd, method, ignoringCase: false)
    }

    /// Whether field `index`'s name is `lowercaseName`, in any case (`lowercaseName` must be lowercase).
    public func nameIs(_ index: Int, _ lowercaseName: StaticString) -> Bool {
        bytesEqual(fields[index].nameStart, fields[index].nameEnd, lowercaseName, ignoringCase: true)
    }

    /// Whether field `index`'s value is `lowercaseValue`, in any case (`lowercaseValue` must be lowercase).
    public func valueIs(_ index: Int, _ lowercaseValue: StaticString) -> Bool {
        bytesEqual(fields[index].valueStart, fields[index].valueEnd, lowercaseValue, ignoringCase: true)
    }

    /// The indices of the fields named `lowercaseName`.
    public func indices(of lowercaseName: StaticString) -> [Int] {
        fields.indices.filter { nameIs($0, lowercaseName) }
    }

    /// Calls `body` with the bytes of `bytes[start..<end]`.
    public func withBytes<R>(_ start: UInt32, _ end: UInt32, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try bytes.withUnsafeReadableBytes { all in
            try body(UnsafeRawBufferPointer(rebasing: all[Int(start)..<Int(end)]))
        }
    }

    /// Field `index`'s value's bytes.
    public func withValue<R>(_ index: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withBytes(fields[index].valueStart, fields[index].valueEnd, body)
    }

    /// The target's bytes.
    public func withTarget<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withBytes(targetStart, targetEnd, body)
    }

    private func bytesEqual(_ start: UInt32, _ end: UInt32, _ other: StaticString, ignoringCase: Bool) -> Bool {
        guard Int(end - start) == other.utf8CodeUnitCount else { return false }
        return withBytes(start, end) { mine in
            let theirs = UnsafeRawBufferPointer(start: other.utf8Start, count: other.utf8CodeUnitCount)
            for i in 0..<theirs.count {
                var byte = mine[i]
                if ignoringCase, byte >= UInt8(ascii: "A"), byte <= UInt8(ascii: "Z") { byte |= 0x20 }
                if byte != theirs[i] { return false }
            }
            return true
        }
    }
}

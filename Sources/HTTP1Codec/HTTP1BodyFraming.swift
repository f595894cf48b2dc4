/// How a message's body is delimited (RFC 9112 §6.3), decided from its head alone, strictly: where the fields
/// could be read two ways, the message is refused rather than framed by a guess.
public enum HTTP1BodyFraming: Sendable, Hashable {
    /// No body.
    case none
    /// Exactly this many bytes (more than zero).
    case length(Int)
    /// Chunked transfer coding, then trailer fields.
    case chunked
    /// Until the connection closes (a response with neither field).
    case untilClose

    /// A request's framing. Refused: Content-Length with Transfer-Encoding (even an empty one), more than one
    /// Content-Length (even equal ones, or a list), a Content-Length that is not digits, and Transfer-Encoding
    /// codings that do not end in one `chunked` (RFC 9112 §6.3: a server cannot tell where such a body ends).
    /// CONNECT has no body (RFC 9110 §9.3.6; llhttp reads none either): its framing fields are checked all the same,
    /// and whoever forwards one that has them must refuse it.
    public static func request(_ head: HTTP1Head) -> Result<HTTP1BodyFraming, HTTP1ParseError> {
        let framing = framing(head, untilCloseWithoutChunked: false)
        if head.methodIs("CONNECT"), case .success = framing { return .success(.none) }
        return framing
    }

    /// A response's framing, given what it answers. No body after HEAD, after a 1xx, 204 or 304 (a 101's bytes
    /// after the head are the new protocol's: the caller's to relay). Refused: Content-Length with
    /// Transfer-Encoding, more than one Content-Length, or one that is not digits, `chunked` twice. Codings that do
    /// not end in `chunked`, or neither field: until the close.
    public static func response(_ head: HTTP1Head, requestMethodIsHEAD: Bool) -> Result<HTTP1BodyFraming, HTTP1ParseError> {
        // A response to HEAD, a 1xx, 204 or 304 has no body whatever its fields say; but fields that would frame one
        // wrongly (an invalid or a second Content-Length, one beside Transfer-Encoding) are refused in it as in any
        // response, as llhttp does.
        let bodyless = requestMethodIsHEAD || (100..<200).contains(head.status) || head.status == 204 || head.status == 304
        return framing(head, untilCloseWithoutChunked: true).map { bodyless ? .none : $0 }
    }

    private static func framing(_ head: HTTP1Head, untilCloseWithoutChunked: Bool) -> Result<HTTP1BodyFraming, HTTP1ParseError> {
        var length: Int?
        var lengths = 0
        var encoded = false
        var codings = Codings()
        for index in head.fields.indices {
            // Most fields are neither: their name's length rules them out before any comparison.
            let field = head.fields[index]
            let nameLength = field.nameEnd - field.nameStart
            guard nameLength == 14 || nameLength == 17 else { continue }
            if head.nameIs(index, "content-length") {
                lengths += 1
                // Digits, then nothing but spaces (llhttp's rule: a tab there is refused too).
                length = head.withBytes(field.valueStart, field.lineEnd - 2) { parseLength($0) }
                if length == nil { return .failure(.invalidContentLength) }
            } else if head.nameIs(index, "transfer-encoding") {
                // Every Transfer-Encoding field's codings, in order (RFC 9110 §5.3). Even an empty one counts as
                // present: beside a Content-Length it is refused.
                encoded = true
                head.withValue(index) { codings.add($0) }
            }
        }
        if encoded {
            if lengths > 0 { return .failure(.ambiguousFraming) }
            // Chunked exactly once, and last (RFC 9112 §7: a sender never applies it twice).
            if codings.lastIsChunked && codings.chunkedCount == 1 { return .success(.chunked) }
            if codings.chunkedCount > 1 { return .failure(.ambiguousFraming) }
            return untilCloseWithoutChunked ? .success(.untilClose) : .failure(.ambiguousFraming)
        }
        switch lengths {
        case 0: return .success(untilCloseWithoutChunked ? .untilClose : .none)
        case 1: return .success(length! > 0 ? .length(length!) : .none)
        default: return .failure(.ambiguousFraming)
        }
    }

    /// A Content-Length value (after its leading whitespace, to its line's CR): digits only (no sign, no list),
    /// at most 18 of them, then only spaces.
    static func parseLength(_ bytes: UnsafeRawBufferPointer) -> Int? {
        var end = bytes.count
        while end > 0 && bytes[end - 1] == space { end -= 1 }
        guard end > 0, end <= 18 else { return nil }
        var value = 0
        for byte in bytes[..<end] {
            guard isDigit(byte) else { return nil }
            value = value * 10 + Int(byte - zero)
        }
        return value
    }

    /// The transfer codings of a message's Transfer-Encoding fields, as far as framing cares.
    struct Codings {
        var chunkedCount = 0
        var lastIsChunked = false

        /// One field's value: comma-separated codings. An empty element (a trailing comma, an empty field) ends
        /// any claim that `chunked` is last.
        mutating func add(_ bytes: UnsafeRawBufferPointer) {
            var start = 0
            while start <= bytes.count {
                var end = start
                while end < bytes.count && bytes[end] != UInt8(ascii: ",") { end += 1 }
                var first = start
                var last = end
                while first < last && (bytes[first] == space || bytes[first] == tab) { first += 1 }
                while last > first && (bytes[last - 1] == space || bytes[last - 1] == tab) { last -= 1 }
                if last > first {
                    let chunked = Self.isChunked(UnsafeRawBufferPointer(rebasing: bytes[first..<last]))
                    if chunked { chunkedCount += 1 }
                    lastIsChunked = chunked
                } else {
                    // An empty element (`chunked,`): RFC 9110 lets a recipient skip it, llhttp does not take
                    // `chunked` for the last coding then, and neither does this.
                    lastIsChunked = false
                }
                start = end + 1
            }
        }

        static func isChunked(_ coding: UnsafeRawBufferPointer) -> Bool {
            let chunked: StaticString = "chunked"
            guard coding.count == chunked.utf8CodeUnitCount else { return false }
            for i in 0..<coding.count where coding[i] | 0x20 != chunked.utf8Start[i] { return false }
            return true
        }
    }
}

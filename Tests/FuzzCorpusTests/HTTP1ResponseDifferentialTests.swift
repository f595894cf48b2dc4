@testable import FuzzEntries
import Testing

/// The proxy's HTTP/1.1 codec against llhttp on what origins send (`HTTP1ResponseDifferential`): the codec is at
/// least as strict, and where both take a response they read it the same.
@Suite struct HTTP1ResponseDifferentialTests {
    /// Compares `text` (after the HEAD mask `heads`) whole and cut after every byte; returns how many inputs the
    /// codec refused and llhttp took.
    @discardableResult
    func check(_ text: String, heads: UInt8 = 0, prefixes: Bool = true) -> Int {
        let bytes = [heads] + Array(text.utf8)
        var stricter = 0
        for length in (prefixes ? Array(1...bytes.count) : [bytes.count]) {
            let result = bytes.prefix(length).withUnsafeBytes { HTTP1ResponseDifferential.compare(UnsafeRawBufferPointer($0)) }
            switch result {
            case .failure(let disagreement):
                Issue.record("\(text.debugDescription) (\(length - 1) of \(bytes.count - 1) bytes): \(disagreement)")
                return stricter
            case .success(let agreement):
                if agreement.codecStricter { stricter += 1 }
            }
        }
        return stricter
    }

    /// Responses both take, read the same at every cut.
    static let taken: [(String, UInt8)] = [
        ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 204 No Content\r\n\r\n", 0),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\nHTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n", 0),
        ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 0b01),
        ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0),
        ("HTTP/1.1 200 OK\r\n\r\nuntil the close", 0),
        ("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.0 200 OK\r\n\r\n", 0),
        ("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 0),
        ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\u{81}\u{2}hi", 0),
        ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx", 0),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n", 0),
        ("HTTP/1.1 200 OK\r\nX-Caf\u{E9}: caf\u{E9} \r\nContent-Length: 0\r\n\r\n", 0),
        ("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", 0),
        ("HTTP/1.1 599 Whatever Reason\r\nContent-Length: 0\r\n\r\n", 0),
        ("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0b01),
        // chunked not last: a response's body then runs until the close (RFC 9112 §6.3).
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello", 0),
    ]

    @Test func responsesBothTakeAreReadTheSame() {
        for (text, heads) in Self.taken { check(text, heads: heads) }
    }

    /// What the codec refuses on purpose (ambiguous framing, malformed lines); llhttp may take some of it.
    @Test func ambiguousResponsesAreRefusedByTheCodec() {
        let refused = [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: a\rb\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
            "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX\u{0}: a\r\n\r\n",
        ]
        for text in refused {
            check(text)
            let bytes = [UInt8(0)] + Array(text.utf8)
            let outcome = bytes.withUnsafeBytes { HTTP1ResponseDifferential.compare(UnsafeRawBufferPointer($0)) }
            if case .success(let agreement) = outcome {
                #expect(agreement.responses == 0, "\(text.debugDescription) was taken")
            }
        }
    }

    /// The first byte reaches both readers: a response to HEAD has no body for either, to GET the body its length
    /// says. (Were the mask lost on one side, every comparison of a HEAD response would be between two readings of
    /// different requests.)
    @Test func bothReadersAnswerTheRequestsTheMaskNames() {
        let bytes = Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n".utf8)
        for (heads, body) in [(UInt8(1), [UInt8]()), (0, Array("ok".utf8))] {
            let llhttp = bytes.withUnsafeBytes { HTTP1ResponseDifferential.llhttpResponses($0, heads: heads) }
            let codec = bytes.withUnsafeBytes { HTTP1ResponseDifferential.codecResponses($0, heads: heads) }
            #expect(llhttp.responses.first?.body == body, "llhttp, mask \(heads)")
            #expect(codec.responses.first?.body == body, "codec, mask \(heads)")
        }
    }
}

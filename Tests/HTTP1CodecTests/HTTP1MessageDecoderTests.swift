import HTTP1Codec
import NIOCore
import Testing

/// Messages one after another: what each side of an intercepted connection decodes.
@Suite struct HTTP1MessageDecoderTests {
    /// Decodes all it can of `text` (then the input's end, with `eof`); each part as a short string.
    func parts(_ decoder: inout HTTP1MessageDecoder, _ text: String, eof: Bool = false) -> (parts: [String], rest: String) {
        var buffer = ByteBuffer(string: text)
        var out: [String] = []
        func describe(_ event: HTTP1MessageDecoder.Event) -> Bool {
            switch event {
            case .part(.head(let head)): out.append(head.kind == .request ? "head \(head.method) \(head.target)" : "head \(head.status)")
            case .part(.body(let bytes)): out.append("body \(String(buffer: bytes))")
            case .part(.end(let trailers)): out.append(trailers == nil ? "end" : "end \(trailers!.fields.count) trailers")
            case .needMore: return false
            case .invalid(let error): out.append("invalid \(error)"); return false
            }
            return true
        }
        while describe(decoder.next(&buffer)) {}
        if eof { _ = describe(decoder.inputEnded(buffer)) }
        return (out, String(buffer: buffer))
    }

    @Test func requestsOneAfterAnother() {
        var decoder = HTTP1MessageDecoder(kind: .request)
        let (out, rest) = parts(&decoder, "GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\n")
        #expect(out == ["head GET /a", "end", "head POST /b", "body hi", "end"])
        #expect(rest == "GET /c HTTP/1.1\r\n")
        #expect(!decoder.isBetweenMessages)
    }

    @Test func theInputsEndCutsAMessageShortOrEndsABodyWithoutLength() {
        var decoder = HTTP1MessageDecoder(kind: .request)
        #expect(parts(&decoder, "GET /a HTTP/1.1\r\nHost", eof: true).parts == ["invalid the connection ended inside a message"])
        decoder = HTTP1MessageDecoder(kind: .request)
        #expect(parts(&decoder, "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", eof: true).parts
            == ["head POST /a", "body ab", "invalid the connection ended inside a message"])
        decoder = HTTP1MessageDecoder(kind: .request)
        #expect(parts(&decoder, "GET /a HTTP/1.1\r\n\r\n\r\n", eof: true).parts == ["head GET /a", "end"])
        decoder = HTTP1MessageDecoder(kind: .response)
        #expect(parts(&decoder, "HTTP/1.1 200 OK\r\n\r\nall", eof: true).parts == ["head 200", "body all", "end"])
    }

    @Test func responsesFollowTheRequestTheyAnswer() {
        var decoder = HTTP1MessageDecoder(kind: .response)
        decoder.answeringHEAD = true
        #expect(parts(&decoder, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n").parts == ["head 200", "end"])
        decoder.answeringHEAD = false
        // 1xx, then the final response.
        #expect(parts(&decoder, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").parts
            == ["head 100", "end", "head 204", "end"])
        #expect(decoder.isBetweenMessages)
    }

    @Test func switchingProtocolsStopsHTTP() {
        var decoder = HTTP1MessageDecoder(kind: .response)
        let (out, rest) = parts(&decoder, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\u{81}\u{5}hello")
        #expect(out == ["head 101", "end"])
        #expect(rest == "\u{81}\u{5}hello")
        #expect(decoder.hasStopped)
        var connect = HTTP1MessageDecoder(kind: .response)
        connect.answeringCONNECT = true
        #expect(parts(&connect, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nraw").rest == "raw")
    }

    /// A response without a body (to HEAD, 1xx, 101, 204, 304, a CONNECT's 2xx) still has its framing fields checked:
    /// found by the response differential against llhttp, which refuses these.
    @Test(arguments: [
        ("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", true, false),
        ("HTTP/1.1 204 No Content\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false, false),
        ("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false, false),
        ("HTTP/1.1 101 Switching Protocols\r\nContent-Length: -1\r\n\r\n", false, false),
        ("HTTP/1.1 100 Continue\r\nContent-Length: 1, 1\r\n\r\n", false, false),
        ("HTTP/1.1 200 Connection established\r\nContent-Length: 3a\r\n\r\n", false, true),
    ])
    func aResponseWithoutABodyStillHasItsFramingChecked(_ text: String, head: Bool, connect: Bool) {
        var decoder = HTTP1MessageDecoder(kind: .response)
        decoder.answeringHEAD = head
        decoder.answeringCONNECT = connect
        let out = parts(&decoder, text).parts
        #expect(out.count == 1 && out[0].hasPrefix("invalid"), "\(out)")
        // The same fields, well formed: no body all the same.
        var valid = HTTP1MessageDecoder(kind: .response)
        valid.answeringHEAD = true
        #expect(parts(&valid, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n").parts == ["head 200", "end"])
    }

    @Test func afterAnErrorNothingMoreIsDecoded() {
        var decoder = HTTP1MessageDecoder(kind: .request)
        #expect(parts(&decoder, "GET / HTTP/1.1\r\nA: b\0\r\n\r\nGET / HTTP/1.1\r\n\r\n").parts == ["invalid invalid header field value"])
        #expect(parts(&decoder, "GET / HTTP/1.1\r\n\r\n").parts.isEmpty)
    }
}

@testable import EgressProxy
import HTTP1Codec
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@Suite struct RelayedResponseEncoderTests {
    func head(_ status: HTTPResponseStatus, _ fields: [(String, String)], version: HTTPVersion = .http1_1) -> HTTPServerResponsePart {
        .head(HTTPResponseHead(version: version, status: status, headers: HTTPHeaders(fields)))
    }

    func body(_ text: String) -> HTTPServerResponsePart {
        .body(.byteBuffer(ByteBuffer(string: text)))
    }

    /// Writes `parts` as the response to a `method` request; returns the bytes sent.
    func encode(_ parts: [HTTPServerResponsePart], answering method: String?) throws -> String {
        let encoder = RelayedResponseEncoder()
        let channel = EmbeddedChannel(handler: encoder)
        defer { _ = try? channel.finish() }
        encoder.requestMethod = method
        for part in parts { try channel.writeOutbound(part) }
        var sent = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { sent += String(buffer: buffer) }
        return sent
    }

    @Test(arguments: [
        (HTTPResponseStatus.ok, [("Transfer-Encoding", "chunked")], "HEAD", ResponseFraming.none),
        (.ok, [("Content-Length", "3")], "HEAD", .none),
        (.ok, [("Content-Length", "3")], "CONNECT", .none),
        (.proxyAuthenticationRequired, [("Content-Length", "10")], "CONNECT", .none),
        (.ok, [("Transfer-Encoding", "chun\u{212A}ed")], "GET", .untilClose),
        (.ok, [("Transfer-Encoding", " CHUNKED ")], "GET", .chunked),
        (.noContent, [("Transfer-Encoding", "chunked")], "GET", .none),
        (.notModified, [("Content-Length", "3")], "GET", .none),
        (.continue, [], "POST", .none),
        (.ok, [("transfer-encoding", "gzip, Chunked")], "GET", .chunked),
        (.ok, [("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "chunked")], "GET", .chunked),
        (.ok, [("Transfer-Encoding", "chunked, gzip")], "GET", .untilClose),
        (.ok, [("content-length", "3")], "GET", .contentLength),
        (.ok, [], "GET", .untilClose),
    ] as [(HTTPResponseStatus, [(String, String)], String, ResponseFraming)])
    func framingFollowsRFC9112(status: HTTPResponseStatus, fields: [(String, String)], method: String, framing: ResponseFraming) {
        #expect(ResponseFraming(status: status, headers: HTTPHeaders(fields), requestMethod: method) == framing)
    }

    @Test func fieldsAreSentAsTheyCameAndAChunkedBodyIsRechunkedWithItsTrailers() throws {
        let sent = try encode(
            [
                head(.ok, [("x-Mixed-Case", "v"), ("Transfer-Encoding", "chunked"), ("Trailer", "X-Sum")]),
                body("hello "), body(""), body("chunked"), .end(HTTPHeaders([("X-Sum", "42")])),
            ],
            answering: "GET")
        #expect(sent == "HTTP/1.1 200 OK\r\nx-Mixed-Case: v\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            + "6\r\nhello \r\n7\r\nchunked\r\n0\r\nX-Sum: 42\r\n\r\n")
    }

    @Test func fieldBytesAreCopiedAsTheyAreEvenEmptyOrNotASCII() throws {
        let sent = try encode(
            [head(.ok, [("X-Empty", ""), ("X-Text", "caf\u{e9} \u{1F9EA}"), ("Content-Length", "0")]), .end(nil)],
            answering: "GET")
        #expect(Array(sent.utf8) == Array("HTTP/1.1 200 OK\r\nX-Empty: \r\nX-Text: caf\u{e9} \u{1F9EA}\r\nContent-Length: 0\r\n\r\n".utf8))
        var buffer = ByteBuffer()
        buffer.writeHTTPField(name: String(repeating: "n", count: 300), value: String(repeating: "v", count: 5000))
        #expect(buffer.readableBytes == 5304)
        #expect(buffer.getString(at: 295, length: 10) == "nnnnn: vvv")
        #expect(buffer.getString(at: 5302, length: 2) == "\r\n")
    }

    @Test func aResponseToHEADHasNoBodyAndNoChunkTerminator() throws {
        let sent = try encode([head(.ok, [("Transfer-Encoding", "chunked")]), .end(nil)], answering: "HEAD")
        #expect(sent == "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    }

    @Test func lengthAndCloseDelimitedBodiesAreSentAsTheyAre() throws {
        let sent = try encode([head(.ok, [("Content-Length", "5")]), body("hello"), .end(nil)], answering: "GET")
        #expect(sent == "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        let old = try encode([head(.ok, [], version: .http1_0), body("until close"), .end(nil)], answering: "GET")
        #expect(old == "HTTP/1.0 200 OK\r\n\r\nuntil close")
    }

    @Test func theRequestMethodLastsUntilTheFinalResponseAfterAnInformationalOne() throws {
        let sent = try encode(
            [head(.continue, []), .end(nil), head(.ok, [("Transfer-Encoding", "chunked")]), .end(nil)], answering: "HEAD")
        #expect(sent == "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    }

    /// Whether the state machine closes the connection after a lengthless 200 answering `method`; nil if the
    /// exchange did not complete.
    func closesAfterALengthlessResponse(to method: HTTPMethod) -> Bool? {
        var machine = InterceptedExchangeStateMachine(reportQuery: false)
        _ = machine.requestHead(InterceptedExchangeStateMachineTests.parse("\(method.rawValue) / HTTP/1.1\r\n\r\n", .request))
        _ = machine.requestEnd()
        _ = machine.responseHead(InterceptedExchangeStateMachineTests.parse("HTTP/1.1 200 OK\r\n\r\n", .response))
        guard case .forwardAndComplete(_, let thenClose) = machine.responseEnd() else { return nil }
        return thenClose
    }

    @Test func theStateMachineClosesAfterABodyThatEndsWithTheConnection() {
        #expect(closesAfterALengthlessResponse(to: .GET) == true)
        #expect(closesAfterALengthlessResponse(to: .HEAD) == false)  // kept alive: a HEAD response has no body
    }
}

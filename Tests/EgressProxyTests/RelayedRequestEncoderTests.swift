@testable import EgressProxy
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@Suite struct RelayedRequestEncoderTests {
    /// Writes `parts` through the encoder; returns the bytes sent, or nil when a write failed.
    func encode(_ method: HTTPMethod, _ fields: [(String, String)], body: [String]) throws -> String? {
        let channel = EmbeddedChannel(handler: RelayedRequestEncoder())
        defer { _ = try? channel.finish() }
        var parts: [HTTPClientRequestPart] = [.head(HTTPRequestHead(version: .http1_1, method: method, uri: "/x", headers: HTTPHeaders(fields)))]
        parts += body.map { .body(.byteBuffer(ByteBuffer(string: $0))) }
        parts.append(.end(nil))
        for part in parts {
            do { try channel.writeOutbound(part) } catch { return nil }
        }
        var sent = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { sent += String(buffer: buffer) }
        return sent
    }

    /// NIO's encoder sent these bodies unframed under a chunked field, or dropped their framing (TRACE), so an
    /// origin read the body as requests of its own.
    @Test(arguments: [HTTPMethod.GET, .DELETE, .OPTIONS, .TRACE, .POST, .RAW(value: "PROPFIND")])
    func aChunkedBodyIsSentChunkedWhateverTheMethodAndCase(method: HTTPMethod) throws {
        for spelling in ["chunked", "Chunked", "CHUNKED", " chunked "] {
            let sent = try encode(method, [("Host", "h"), ("Transfer-Encoding", spelling)], body: ["0\r\n\r\nGET /hidden"])
            #expect(sent == "\(method.rawValue) /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                + "10\r\n0\r\n\r\nGET /hidden\r\n0\r\n\r\n")
        }
    }

    @Test(arguments: [HTTPMethod.GET, .TRACE, .POST])
    func aContentLengthBodyIsSentAsItIsWithItsLength(method: HTTPMethod) throws {
        let sent = try encode(method, [("Host", "h"), ("Content-Length", "5")], body: ["hel", "lo"])
        #expect(sent == "\(method.rawValue) /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
    }

    @Test func nothingIsAddedToARequestWithoutABody() throws {
        #expect(try encode(.POST, [("Host", "h")], body: []) == "POST /x HTTP/1.1\r\nHost: h\r\n\r\n")
        // A Transfer-Encoding field with no coding says nothing, and is left out.
        #expect(try encode(.POST, [("Host", "h"), ("Transfer-Encoding", " ")], body: []) == "POST /x HTTP/1.1\r\nHost: h\r\n\r\n")
    }

    @Test func codingsFromSeveralFieldsBecomeOneFieldEndingInChunked() throws {
        let sent = try encode(.PUT, [("Transfer-Encoding", "gzip"), ("X-A", "1"), ("transfer-encoding", "Chunked")], body: ["ab"])
        #expect(sent == "PUT /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nX-A: 1\r\n\r\n2\r\nab\r\n0\r\n\r\n")
    }

    @Test func aBodyWhoseLastCodingIsNotChunkedIsRefused() throws {
        #expect(try encode(.POST, [("Transfer-Encoding", "chunked, gzip")], body: ["ab"]) == nil)
        #expect(try encode(.POST, [("Transfer-Encoding", "chunked"), ("Content-Length", "2")], body: ["ab"]) == nil)
    }

    /// Body bytes the head's framing does not allow are never written: not after a refused head, not without a
    /// length or chunking, not past the length. The connection closes instead.
    @Test(arguments: [
        ([("Transfer-Encoding", "gzip")], ["hidden"]),
        ([], ["GET /hidden HTTP/1.1\r\n\r\n"]),
        ([("Content-Length", "2")], ["ab", "GET /hidden"]),
        ([("Content-Length", "+2")], ["ab"]),
    ] as [([(String, String)], [String])])
    func bytesOutsideTheFramingCloseTheConnectionUnsent(fields: [(String, String)], body: [String]) throws {
        let channel = EmbeddedChannel(handler: RelayedRequestEncoder())
        defer { _ = try? channel.finish() }
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        var failures = 0
        let parts: [HTTPClientRequestPart] = [.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/x", headers: HTTPHeaders(fields)))]
            + body.map { .body(.byteBuffer(ByteBuffer(string: $0))) } + [.end(nil)]
        for part in parts {
            do { try channel.writeOutbound(part) } catch { failures += 1 }
        }
        var sent = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { sent += String(buffer: buffer) }
        #expect(failures > 0)
        #expect(!sent.contains("hidden"), "\(sent)")
        #expect(!channel.isActive)
    }
}

import NIOCore
import NIOHTTP1

/// How a relayed HTTP/1.1 response's body is delimited (RFC 9112 §6.3), decided from its head and the method of
/// the request it answers the way the upstream's decoder read it, so the client is sent the same framing.
enum ResponseFraming: Equatable {
    /// No body: a response to HEAD or CONNECT (the upstream's decoder reads none after either), 1xx, 204, 304.
    case none
    case contentLength
    case chunked
    /// The body runs until the connection closes (no length, or a transfer coding that does not end in chunked):
    /// the client's connection is closed after it.
    case untilClose

    /// - Parameter requestMethod: the method of the request answered, as sent (`HEAD`, `GET`, ...).
    init(status: HTTPResponseStatus, headers: HTTPHeaders, requestMethod: String?) {
        let code = status.code
        if requestMethod == "HEAD" || requestMethod == "CONNECT" || code < 200 || code == 204 || code == 304 {
            self = .none
            return
        }
        var codings: String?
        var hasLength = false
        for (name, value) in headers {
            if name.equalsIgnoringASCIICase("transfer-encoding") {
                codings = codings.map { $0 + "," + value } ?? value
            } else if name.equalsIgnoringASCIICase("content-length") {
                hasLength = true
            }
        }
        if let codings {
            // The final coding decides (RFC 9112 §6.3 rule 4): chunked, or the body ends with the connection.
            // Compared as ASCII, as llhttp does: a Unicode case mapping would take "chunKed" (KELVIN SIGN) for it.
            let bytes = Array(codings.utf8)
            let start = bytes.lastIndex(of: UInt8(ascii: ",")).map { $0 + 1 } ?? 0
            let last = String(decoding: bytes[start...].filter { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\t") }, as: UTF8.self)
            self = last.equalsIgnoringASCIICase("chunked") ? .chunked : .untilClose
        } else {
            self = hasLength ? .contentLength : .untilClose
        }
    }
}

/// Serializes HTTP/1.1 responses to a client as they were framed upstream: the head's fields exactly as given
/// (nothing added or removed here; the plain-HTTP path has already dropped hop-by-hop fields and added `Via`),
/// chunked bodies re-chunked, no body at all for a response to HEAD or CONNECT. NIO's `HTTPResponseEncoder`
/// rewrites framing fields on every head (a copy of the fields per response), turning `Transfer-Encoding: gzip,
/// chunked` into `chunked` over a body that is still gzip-coded, and, used on its own, cannot know a response
/// answers HEAD. Used by `RelayedResponseEncoder` on the proxy's own port, and by the inspected client's handler
/// itself (one handler and one dynamic cast fewer per part).
struct RelayedResponseSerializer {
    /// What a part becomes.
    enum Output {
        case bytes(ByteBuffer)
        /// Nothing is sent: a body the response may not have, or an empty chunk (which would end the body).
        case nothing
        /// A file body: relayed bodies are bytes, never files.
        case refused
    }

    /// The method of the request the next response answers; set as each request is taken on (one at a time: a
    /// later request is held until this response has ended).
    var requestMethod: String?
    private var framing = ResponseFraming.none
    /// The response being written is final (not a 1xx before it): its end ends the exchange.
    private var final = false

    mutating func serialize(_ part: HTTPServerResponsePart, allocator: ByteBufferAllocator) -> Output {
        switch part {
        case .head(let head):
            framing = ResponseFraming(status: head.status, headers: head.headers, requestMethod: requestMethod)
            final = head.status.code >= 200 || head.status == .switchingProtocols
            var buffer = allocator.buffer(capacity: 256)
            if head.version == .http1_1 {
                buffer.writeStaticString("HTTP/1.1 ")
            } else {
                buffer.writeString("HTTP/\(head.version.major).\(head.version.minor) ")
            }
            buffer.writeString(String(head.status.code))
            buffer.writeStaticString(" ")
            buffer.writeString(head.status.reasonPhrase)
            buffer.writeStaticString("\r\n")
            for (name, value) in head.headers { buffer.writeHTTPField(name: name, value: value) }
            buffer.writeStaticString("\r\n")
            return .bytes(buffer)
        case .body(let body):
            switch framing {
            case .none:
                return .nothing  // the upstream's decoder never gives one; nothing may follow such a head
            case .contentLength, .untilClose:
                guard case .byteBuffer(let bytes) = body else { return .refused }
                return .bytes(bytes)
            case .chunked:
                guard case .byteBuffer(var bytes) = body else { return .refused }
                guard bytes.readableBytes > 0 else { return .nothing }  // an empty chunk would end the body
                return .bytes(ByteBuffer.chunk(of: &bytes, allocator: allocator))
            }
        case .end(let trailers):
            var buffer = allocator.buffer(capacity: 0)
            if framing == .chunked { buffer.writeLastChunk(trailers: trailers) }
            framing = .none
            if final { requestMethod = nil }
            // Written even when empty: its write's promise is what a close after this response waits for.
            return .bytes(buffer)
        }
    }

    /// Serializes `part` and writes it on `context`: nothing for a part the response may not have (the promise
    /// succeeds), a failed promise for a file body.
    mutating func write(_ part: HTTPServerResponsePart, on context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        switch serialize(part, allocator: context.channel.allocator) {
        case .bytes(let bytes): context.write(NIOAny(bytes), promise: promise)
        case .nothing: promise?.succeed(())
        case .refused: promise?.fail(ChannelError.operationUnsupported)
        }
    }
}

/// `RelayedResponseSerializer` as a handler, for the proxy's own port.
final class RelayedResponseEncoder: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = ByteBuffer

    private var serializer = RelayedResponseSerializer()

    /// The method of the request the next response answers.
    var requestMethod: String? {
        get { serializer.requestMethod }
        set { serializer.requestMethod = newValue }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        serializer.write(unwrapOutboundIn(data), on: context, promise: promise)
    }
}

@available(*, unavailable)
extension RelayedResponseEncoder: Sendable {}

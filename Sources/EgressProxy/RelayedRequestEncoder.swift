import NIOCore
import NIOHTTP1

/// Writes HTTP/1.1 requests to an upstream framed by their own fields, as llhttp read them from the client: a body
/// with a Content-Length as it is, a chunked one (the last transfer coding is `chunked`, in any case) re-chunked
/// under one `Transfer-Encoding: chunked`, no body otherwise (a Transfer-Encoding field with no coding in it is
/// left out). Both the inspected path and the proxy's own port forward only requests whose framing they checked
/// (`InterceptedExchangeStateMachine.framingProblem`): one Content-Length, or Transfer-Encoding `chunked` alone,
/// never both.
///
/// NIO's `HTTPRequestEncoder` frames by method instead. It drops Content-Length and Transfer-Encoding from a
/// TRACE, adds `Transfer-Encoding: chunked` to a POST with neither, and on any other method takes only a
/// lowercase `chunked` for chunked. So a GET sent with `Transfer-Encoding: Chunked` had its decoded body written
/// unframed under that field, and an origin read a request hidden in the body: one the proxy never saw, judged
/// or reported (`SmugglingTests`, the `body-…` cases).
final class RelayedRequestEncoder: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = ByteBuffer

    /// A request whose framing the proxy does not know how to keep (it checks every request before this).
    struct UnframeableRequest: Error, CustomStringConvertible {
        var description: String
    }

    /// The body being written is chunked.
    private var chunked = false

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            var buffer = context.channel.allocator.buffer(capacity: 256)
            buffer.writeString(head.method.rawValue)
            buffer.writeStaticString(" ")
            buffer.writeString(head.uri)
            if head.version == .http1_1 {
                buffer.writeStaticString(" HTTP/1.1\r\n")
            } else {
                buffer.writeString(" HTTP/\(head.version.major).\(head.version.minor)\r\n")
            }
            // The transfer codings of all Transfer-Encoding fields, in order (RFC 9110 §5.3); empty ones say nothing.
            // (Most requests have none: then nothing is allocated for them.)
            var codings: [Substring] = []
            for (name, value) in head.headers where name.equalsIgnoringASCIICase("transfer-encoding") {
                codings += value.split(separator: ",").map { $0.trimmingASCIIWhitespace() }.filter { !$0.isEmpty }
            }
            chunked = codings.last?.equalsIgnoringASCIICase("chunked") ?? false
            guard chunked || codings.isEmpty else {
                promise?.fail(UnframeableRequest(description: "a Transfer-Encoding whose last coding is not chunked"))
                return
            }
            var codingsWritten = false
            for (name, value) in head.headers {
                guard name.equalsIgnoringASCIICase("transfer-encoding") else {
                    buffer.writeHTTPField(name: name, value: value)
                    continue
                }
                // One field, where the first was, ending in a lowercase `chunked`: an origin that compares case
                // (or reads only one of two fields) cannot take the body for anything else.
                guard chunked, !codingsWritten else { continue }
                codingsWritten = true
                buffer.writeHTTPField(name: name, value: (codings.dropLast().map(String.init) + ["chunked"]).joined(separator: ", "))
            }
            buffer.writeStaticString("\r\n")
            context.write(wrapOutboundOut(buffer), promise: promise)
        case .body(.byteBuffer(var bytes)):
            guard chunked else {
                context.write(wrapOutboundOut(bytes), promise: promise)
                return
            }
            guard bytes.readableBytes > 0 else {
                // An empty chunk would end the body. An empty write keeps the promise in order with the others.
                context.write(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: promise)
                return
            }
            var chunk = context.channel.allocator.buffer(capacity: bytes.readableBytes + 16)
            chunk.writeString(String(bytes.readableBytes, radix: 16))
            chunk.writeStaticString("\r\n")
            chunk.writeBuffer(&bytes)
            chunk.writeStaticString("\r\n")
            context.write(wrapOutboundOut(chunk), promise: promise)
        case .body(.fileRegion):
            promise?.fail(ChannelError.operationUnsupported)  // relayed bodies are bytes, never files
        case .end(let trailers):
            var buffer = context.channel.allocator.buffer(capacity: 0)
            if chunked {
                buffer.writeStaticString("0\r\n")
                for (name, value) in trailers ?? [:] { buffer.writeHTTPField(name: name, value: value) }
                buffer.writeStaticString("\r\n")
            }
            chunked = false
            // Written even when empty: its promise completes in order with the request's other writes.
            context.write(wrapOutboundOut(buffer), promise: promise)
        }
    }
}

@available(*, unavailable)
extension RelayedRequestEncoder: Sendable {}

extension StringProtocol {
    /// Without the spaces and tabs at either end (optional whitespace around a field value, RFC 9110 §5.5).
    func trimmingASCIIWhitespace() -> SubSequence {
        let isWhitespace = { (c: Character) in c == " " || c == "\t" }
        guard let first = firstIndex(where: { !isWhitespace($0) }) else { return self[endIndex...] }
        let last = lastIndex(where: { !isWhitespace($0) })!
        return self[first...last]
    }
}

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

    /// How the body being written is framed. After a head it cannot frame (or bytes its framing does not allow)
    /// nothing more is written: the connection is closed, so no byte of that request goes out unframed.
    private enum Framing {
        case none
        case length(remaining: Int)
        case chunked
        case failed
    }

    private var framing = Framing.none

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            guard case .none = framing else {
                return refuse("a request head before the last request ended", context: context, promise: promise)
            }
            var buffer = context.channel.allocator.buffer(capacity: 256)
            buffer.writeString(head.method.rawValue)
            buffer.writeStaticString(" ")
            buffer.writeString(head.uri)
            if head.version == .http1_1 {
                buffer.writeStaticString(" HTTP/1.1\r\n")
            } else {
                buffer.writeString(" HTTP/\(head.version.major).\(head.version.minor)\r\n")
            }
            guard let (framing, codings) = Self.framing(of: head.headers) else {
                return refuse("framing it cannot keep (Content-Length and Transfer-Encoding, or a coding after chunked)",
                              context: context, promise: promise)
            }
            self.framing = framing
            let chunked = !codings.isEmpty
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
            switch framing {
            case .failed:
                promise?.fail(UnframeableRequest(description: "the request was refused"))
            case .none:
                guard bytes.readableBytes == 0 else {
                    return refuse("body bytes for a request with no body", context: context, promise: promise)
                }
                context.write(wrapOutboundOut(bytes), promise: promise)
            case .length(let remaining):
                guard bytes.readableBytes <= remaining else {
                    return refuse("more body bytes than its Content-Length", context: context, promise: promise)
                }
                framing = remaining == bytes.readableBytes ? .none : .length(remaining: remaining - bytes.readableBytes)
                context.write(wrapOutboundOut(bytes), promise: promise)
            case .chunked:
                guard bytes.readableBytes > 0 else {
                    // An empty chunk would end the body. An empty write keeps the promise in order with the others.
                    context.write(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: promise)
                    return
                }
                context.write(wrapOutboundOut(ByteBuffer.chunk(of: &bytes, allocator: context.channel.allocator)), promise: promise)
            }
        case .body(.fileRegion):
            refuse("a file body", context: context, promise: promise)  // relayed bodies are bytes, never files
        case .end(let trailers):
            var buffer = context.channel.allocator.buffer(capacity: 0)
            switch framing {
            case .failed:
                promise?.fail(UnframeableRequest(description: "the request was refused"))
                return
            case .length:
                return refuse("a request ended before its Content-Length", context: context, promise: promise)
            case .chunked:
                buffer.writeLastChunk(trailers: trailers)
            case .none:
                break
            }
            framing = .none
            // Written even when empty: its promise completes in order with the request's other writes.
            context.write(wrapOutboundOut(buffer), promise: promise)
        }
    }

    /// How a head's fields frame its body, and its transfer codings (all Transfer-Encoding fields', in order, RFC
    /// 9110 §5.3; empty ones say nothing) when it is chunked; nil for framing that cannot be kept. Most requests
    /// have neither field: then nothing is allocated.
    private static func framing(of headers: HTTPHeaders) -> (Framing, codings: [Substring])? {
        var codings: [Substring] = []
        var lengths: [Substring] = []
        for (name, value) in headers {
            if name.equalsIgnoringASCIICase("transfer-encoding") {
                codings += value.split(separator: ",").map { $0.trimmingASCIIWhitespace() }.filter { !$0.isEmpty }
            } else if name.equalsIgnoringASCIICase("content-length") {
                lengths.append(value.trimmingASCIIWhitespace())
            }
        }
        switch (codings.isEmpty, lengths.count) {
        case (true, 0):
            return (.none, [])
        case (true, 1):
            guard lengths[0].utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                let length = Int(lengths[0])
            else { return nil }
            return (length > 0 ? .length(remaining: length) : .none, [])
        case (false, 0) where codings.last!.equalsIgnoringASCIICase("chunked"):
            return (.chunked, codings)
        default:
            return nil
        }
    }

    /// Nothing of this request, or after it, goes out: the write fails and the connection closes.
    private func refuse(_ reason: String, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        framing = .failed
        promise?.fail(UnframeableRequest(description: reason))
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension RelayedRequestEncoder: Sendable {}

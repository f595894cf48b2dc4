import NIOCore
import NIOHTTP1

/// The end of a plain-HTTP upstream connection's pipeline: passes response parts to the client's
/// `ProxyFrontHandler`, and only reads more from the upstream while the client can take it.
final class UpstreamHTTPHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    private weak var front: ProxyFrontHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Between exchanges: the connection is kept for reuse and nothing should arrive.
    private(set) var isIdle = false

    func attach(to front: ProxyFrontHandler) {
        self.front = front
        isIdle = false
    }

    func detach() {
        front = nil
    }

    func exchangeFinished() {
        isIdle = true
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let front, !isIdle else {
            // A response nobody asked for: the connection cannot be trusted for reuse.
            context.close(promise: nil)
            return
        }
        let part = unwrapInboundIn(data)
        if case .end = part, !context.channel.isActive {
            // The decoder ends a body with no length when the connection goes. A FIN confirms that end: it comes
            // as `inputClosed` first, with the channel still open. Here the connection went without one being seen
            // (a reset; the proxy closing it; or, rarely, a failed write after which NIO reads what is left without
            // reporting its end), so the end is not confirmed: `channelInactive` reports the response as cut off.
            // Erring this way costs a client a retry; the other way would pass a cut body off as whole.
            return
        }
        front.upstreamResponse(part)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        front?.upstreamReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        front?.upstreamClosed(self, reason: "connection closed")
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            // The response decoder has already delivered a read-until-close body's end, if there was one.
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A response the decoder refused (two lengths, a bare LF, a head past the limit) is not the upstream closing;
        // the end of the connection inside a message (llhttp's invalid EOF state) is.
        let invalid = (error as? HTTPParserError).map { $0 != .invalidEOFState } ?? false
        front?.upstreamClosed(self, reason: "\(GlueHandler.describe(error))", invalidResponse: invalid)
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            front?.upstreamWritable()
        }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if let front, !front.clientIsWritable {
            pendingRead = true
        } else {
            context.read()
        }
    }

    /// The client drained its buffer: resume reading the upstream.
    func clientBecameWritable() {
        guard pendingRead, let context else { return }
        pendingRead = false
        context.read()
    }
}

@available(*, unavailable)
extension UpstreamHTTPHandler: Sendable {}

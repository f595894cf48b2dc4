import ControlPlane
import NIOCore

/// One half of the plaintext relay an intercepted connection becomes after a 101 (WebSocket and other
/// upgrades): above each side's TLS, what one reads the other writes, with the same backpressure as the
/// tunnel relay (a read only while the partner can take more). Either side closing closes both.
final class UpgradedRelayHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let fromClient: Bool
    private let connection: InterceptedConnection
    private var partner: UpgradedRelayHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false

    private init(fromClient: Bool, connection: InterceptedConnection) {
        self.fromClient = fromClient
        self.connection = connection
    }

    static func matchedPair(connection: InterceptedConnection) -> (client: UpgradedRelayHandler, upstream: UpgradedRelayHandler) {
        let client = UpgradedRelayHandler(fromClient: true, connection: connection)
        let upstream = UpgradedRelayHandler(fromClient: false, connection: connection)
        client.partner = upstream
        upstream.partner = client
        return (client, upstream)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    /// Called once the HTTP handlers are gone: they may have held back a read while waiting for the 101.
    func startReading() {
        guard let context, context.channel.isActive else { return }
        context.read()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    /// Bytes the HTTP handler had received past the upgrade (the new protocol's first), passed on as if just read;
    /// called once both sides' relays are in place.
    func relay(leftover: ByteBuffer?) {
        guard let leftover, leftover.readableBytes > 0, let partnerContext = partner?.context else { return }
        connection.relayed(leftover.readableBytes, fromClient: fromClient)
        partnerContext.writeAndFlush(wrapOutboundOut(leftover), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        connection.relayed(bytes.readableBytes, fromClient: fromClient)
        partner?.context?.write(wrapOutboundOut(bytes), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.context?.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if fromClient { connection.clientClosed() } else { connection.upstreamClosed() }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ProxyShutdownEvent {
            connection.shutdown()
        } else if case ChannelEvent.inputClosed = event {
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        connection.noteClose(by: fromClient ? .client : .upstream, reason: "error: \(GlueHandler.describe(error))")
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let partner, partner.pendingRead, let partnerContext = partner.context {
            partner.pendingRead = false
            partnerContext.read()
        }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if partner?.context?.channel.isWritable ?? false {
            context.read()
        } else {
            pendingRead = true
        }
    }

    func close() {
        context?.close(promise: nil)
    }
}

@available(*, unavailable)
extension UpgradedRelayHandler: Sendable {}

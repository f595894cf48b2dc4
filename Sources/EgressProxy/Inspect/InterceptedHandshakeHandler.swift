import NIOCore
import NIOTLS
import OpenSSLTLS

/// The only handler above each side's TLS while the upstream's handshake is under way: the HTTP handlers wait
/// for the protocol the upstream chooses (ALPN), which is the one the client is answered with. Tells the
/// connection of the upstream's handshake, of errors and closes meanwhile; the connection removes it when it
/// installs the HTTP handlers.
final class InterceptedHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    enum Side { case client, upstream }

    private let side: Side
    private let connection: InterceptedConnection

    init(side: Side, connection: InterceptedConnection) {
        self.side = side
        self.connection = connection
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if side == .upstream, case TLSUserEvent.handshakeCompleted(let negotiated) = event {
            // Installs the HTTP handlers after this one and removes it.
            let tls = try? context.pipeline.syncOperations.handler(type: OpenSSLTLSHandler.self)
            connection.upstreamHandshakeCompleted(
                negotiated: negotiated, resumed: tls?.sessionReused ?? false, authentication: tls?.serverAuthentication)
        } else {
            connection.lifecycleEvent(event, clientSide: side == .client, context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch side {
        case .client: connection.clientFailed(error)
        case .upstream: connection.upstreamFailed(error)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch side {
        case .client: connection.clientClosed()
        case .upstream: connection.upstreamClosed()
        }
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension InterceptedHandshakeHandler: Sendable {}

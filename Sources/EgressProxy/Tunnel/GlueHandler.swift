import ClientHello
import ControlPlane
import Glibc
import NIOCore

/// One half of a relay between the client and upstream channels of a tunnel (after swift-nio-examples'
/// connect-proxy): what one channel reads the other writes; a half-close is forwarded as a half-close; a
/// read is only asked for while the partner can take more (backpressure), so memory does not grow with
/// the transfer.
///
/// The client side also peeks for the ClientHello: each read is passed on first, then a copy is parsed, so
/// the peek never holds a byte back. It stops at an answer, at the size limit, or when its timer fires.
final class GlueHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let side: TunnelSession.Side
    private let session: TunnelSession
    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private var inputClosed = false
    /// Client side only, until the peek has an answer.
    private var peek: ClientHelloPeek?
    private let peekTimeout: TimeAmount
    private var peekTimer: Scheduled<Void>?
    /// Client side, enforce mode: what the client sent before the policy's decision (bounded by the peek limit,
    /// after which the peek gives up and the decision comes).
    private var held: ByteBuffer?
    /// The client half-closed while its bytes were held: passed on after them.
    private var halfClosePending = false

    private init(side: TunnelSession.Side, session: TunnelSession, peek: ClientHelloPeek?, peekTimeout: TimeAmount) {
        self.side = side
        self.session = session
        self.peek = peek
        self.peekTimeout = peekTimeout
    }

    /// A client-side and an upstream-side handler that relay to each other; the client side peeks at up to
    /// `peekLimit` bytes for `peekTimeout`.
    static func matchedPair(
        session: TunnelSession,
        peekLimit: Int = ClientHelloParser.defaultLimit,
        peekTimeout: TimeAmount = .seconds(10)
    ) -> (client: GlueHandler, upstream: GlueHandler) {
        let client = GlueHandler(
            side: .client,
            session: session,
            peek: ClientHelloPeek(limit: peekLimit),
            peekTimeout: peekTimeout
        )
        let upstream = GlueHandler(side: .upstream, session: session, peek: nil, peekTimeout: peekTimeout)
        client.partner = upstream
        upstream.partner = client
        session.closeBoth = { [weak client, weak upstream] _ in
            client?.context?.close(promise: nil)
            upstream?.context?.close(promise: nil)
        }
        session.releaseClientBytes = { [weak client] in client?.releaseHeld() }
        return (client, upstream)
    }

    /// A tunnel's record and its two relay halves, set up the same way for a plain CONNECT and for one that
    /// inspection passes through.
    static func tunnel(
        reporting: Reporting,
        metadata: ConnectMetadata,
        destination: Destination,
        started: NIODeadline,
        settings: ConnectionSettings,
        eventLoop: any EventLoop
    ) -> (session: TunnelSession, client: GlueHandler, upstream: GlueHandler) {
        let session = TunnelSession(
            reporting: reporting,
            metadata: metadata,
            destination: destination,
            started: started,
            idleTimeout: settings.idleTimeout,
            eventLoop: eventLoop
        )
        let (client, upstream) = matchedPair(
            session: session,
            peekLimit: settings.clientHelloLimit,
            peekTimeout: settings.clientHelloTimeout
        )
        return (session, client, upstream)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if peek != nil {
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let timeout = peekTimeout
            peekTimer = context.eventLoop.scheduleTask(in: timeout) {
                loopBound.value.stopPeeking(because: "none within \(UpstreamConnector.describe(timeout))")
            }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        stopPeeking(because: "connection closed")
        self.context = nil
        self.partner = nil
    }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        session.read(bytes.readableBytes, from: side)
        if side == .client && session.holdsClientBytes {
            // Enforce mode: nothing goes to the destination before the policy has seen the name.
            let copy = bytes
            if held == nil { held = bytes } else { held!.writeBuffer(&bytes) }
            if peek != nil, case .done(let result) = peek!.feed(copy) {
                concludePeek(result)
            }
            return
        }
        // Enforce mode judges a plain-HTTP tunnel's later requests before their bytes go on.
        if refusedLater { return }
        if side == .client, let allowed = session.forwardable(bytes) {
            forwardThenClose(bytes, allowed)
            return
        }
        partner?.partnerWrite(bytes)  // observe mode forwards first: the peek never holds a byte
        if peek != nil, case .done(let result) = peek!.feed(bytes) {
            concludePeek(result)
        }
    }

    /// A later request was refused: the `count` bytes before it go on, then the destination's side is half-closed,
    /// so requests pipelined before it are still answered and the destination ends the tunnel (the idle timeout
    /// bounds one that does not). Nothing more of the client's goes on.
    private func forwardThenClose(_ bytes: ByteBuffer, _ count: Int) {
        guard !refusedLater else { return }
        refusedLater = true
        if count > 0, let slice = bytes.getSlice(at: bytes.readerIndex, length: count) {
            partner?.partnerWrite(slice)
        }
        partner?.partnerHalfClose()
    }

    /// A later request was refused: what the client sends after it is dropped.
    private var refusedLater = false

    /// The policy let the tunnel through: what was held goes out, then any half-close that waited for it.
    fileprivate func releaseHeld() {
        if let held, held.readableBytes > 0 {
            self.held = nil
            // The first request was judged by the peek; a second one pipelined behind it in these bytes is judged here.
            if let allowed = session.forwardable(held) {
                forwardThenClose(held, allowed)
                return
            }
            partner?.partnerWrite(held)
            partner?.partnerFlush()
        }
        if pendingRead, partner?.partnerIsWritable ?? false, let context {
            pendingRead = false
            context.read()
        }
        if halfClosePending {
            halfClosePending = false
            if partner?.inputClosed == true {
                context?.close(promise: nil)
                partner?.partnerCloseFully()
            } else {
                partner?.partnerHalfClose()
            }
        }
    }

    private func stopPeeking(because why: String) {
        guard peek != nil else { return }
        concludePeek(peek!.giveUp(because: why))
    }

    private func concludePeek(_ result: PeekResult) {
        peek = nil
        peekTimer?.cancel()
        peekTimer = nil
        session.peekConcluded(result)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        stopPeeking(because: "connection closed")
        session.channelInactive(side)
        partner?.partnerCloseFully()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            stopPeeking(because: "client closed its side first")
            inputClosed = true
            session.noteClose(by: side == .client ? .client : .upstream, reason: "eof")
            if side == .client && session.holdsClientBytes {
                // The decision is still to come (a name lookup): the half-close follows the held bytes.
                halfClosePending = true
                return
            }
            if partner?.inputClosed == true {
                // Both directions are finished: nothing more can flow.
                context.close(promise: nil)
                partner?.partnerCloseFully()
            } else {
                partner?.partnerHalfClose()
            }
            return
        }
        if event is ProxyShutdownEvent {
            session.noteClose(by: .proxy, reason: "shutdown")
            context.close(promise: nil)
            partner?.partnerCloseFully()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        session.noteClose(by: side == .client ? .client : .upstream, reason: "error: \(Self.describe(error))")
        context.close(promise: nil)
        partner?.partnerCloseFully()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            partner?.partnerBecameWritable()
        }
        context.fireChannelWritabilityChanged()
    }

    // MARK: outbound

    /// Enforce mode, the peek done: the client's held bytes wait for the policy (for a transparent connection, for a
    /// lookup of the name), and no more are read meanwhile. `releaseHeld` asks again.
    private var waitsForThePolicy: Bool { side == .client && session.holdsClientBytes && peek == nil }

    func read(context: ChannelHandlerContext) {
        if waitsForThePolicy {
            pendingRead = true
        } else if let partner, partner.partnerIsWritable {
            context.read()
        } else {
            pendingRead = true
        }
    }

    // MARK: partner calls

    private func partnerWrite(_ bytes: ByteBuffer) {
        context?.write(wrapOutboundOut(bytes), promise: nil)
    }

    private func partnerFlush() {
        context?.flush()
    }

    private func partnerHalfClose() {
        guard let context else { return }
        context.flush()
        context.close(mode: .output, promise: nil)
    }

    private func partnerCloseFully() {
        context?.close(promise: nil)
    }

    private var partnerIsWritable: Bool {
        context?.channel.isWritable ?? false
    }

    private func partnerBecameWritable() {
        if pendingRead, !waitsForThePolicy, let context {
            pendingRead = false
            context.read()
        }
    }

    /// How an error reads in close records and logs: a socket error as the system words it ("connection reset by
    /// peer"), without the name of the NIO call that met it.
    static func describe(_ error: any Error) -> String {
        if let ioError = error as? IOError {
            guard let text = strerror(ioError.errnoCode) else { return ioError.description }
            return String(cString: text).lowercased()
        }
        return String(describing: error)
    }
}

@available(*, unavailable)
extension GlueHandler: Sendable {}

/// Sent down a connection's pipeline when the proxy stops after the drain period: close now, as `shutdown`.
public struct ProxyShutdownEvent: Sendable {
    public init() {}
}

import ControlPlane
import Interception
import Logging
import NIOCore
import Synchronization

/// A connection redirected to the transparent listener: reads its original destination, dials that IP and
/// port (never a name from the SNI or Host), and becomes a tunnel exactly like a CONNECT one, peeking the
/// ClientHello on the way. A connection whose original destination is one of the proxy's own listeners (or
/// that has none) is refused, so a misconfigured redirect cannot loop.
final class TransparentHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    /// Outbound only for `read`: writes pass through untouched.
    typealias OutboundIn = ByteBuffer

    private let settings: ConnectionSettings
    private let reporting: Reporting
    private let connector: UpstreamConnector
    /// The proxy's own listening addresses.
    /// Bytes the client sent before the upstream was connected.
    private var held: ByteBuffer?
    private var clientClosed = false
    private var clientHalfClosed = false
    /// A read asked for while the upstream was being dialled: asked for again by whoever takes over.
    private var readWithheld = false
    /// The upstream is being dialled.
    private var dialing = false

    init(settings: ConnectionSettings, reporting: Reporting) {
        self.settings = settings
        self.reporting = reporting
        self.connector = UpstreamConnector(settings: settings)
    }

    func channelActive(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        OriginalDestination.of(context.channel).whenSuccess { original in
            let (handler, context) = loopBound.value
            handler.start(original: original, context: context)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if held == nil { held = bytes } else { held!.writeBuffer(&bytes) }
    }

    /// While the original destination is dialled (up to the connect timeout), the client's first bytes are read and
    /// held until they pass the ClientHello limit (64 KiB; a read cycle may take a few buffers more): the rest waits
    /// in its socket, read by the handlers that take over. A dial that fails can then still say which name the
    /// client asked for (its SNI or Host).
    func read(context: ChannelHandlerContext) {
        if dialing, (held?.readableBytes ?? 0) < settings.clientHelloLimit {
            context.read()
        } else {
            readWithheld = true
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        clientClosed = true
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            // Kept for the relay, which is not there yet: it gets it after the held bytes.
            clientHalfClosed = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func start(original: SocketAddress?, context: ChannelHandlerContext) {
        let client = Reporting.describe(context.channel.remoteAddress)
        guard let original, let ip = original.ipAddress, let port = original.port else {
            reporting.logger.warning(
                "transparent listener: a connection that was not redirected (no original destination); refused",
                metadata: ["client.address": "\(client)"])
            context.close(promise: nil)
            return
        }
        if settings.destinationCheck?.isOwnListener(original) ?? false {
            TransparentHandler.logLoopOnce(reporting.logger, ip: ip, port: port)
            context.close(promise: nil)
            return
        }
        let destination = Destination(host: ip, port: port, isIPLiteral: true)
        var metadata = ConnectMetadata(
            eventID: EventID.generate(), transport: .transparent, host: ip, port: port, client: client,
            startedAt: WallClock.rfc3339(unixMillis: WallClock.nowMillis()), outcome: .connected)
        metadata.originalDst = destination.description
        if let policy = reporting.judge(&metadata, host: nil, address: ip, complete: false) {
            metadata.outcome = .failed
            metadata.error = Reporting.blockedByPolicy(policy)
            reporting.action(target: destination.description, metadata: metadata)
            reporting.logConnection(metadata, target: destination.description, mode: "none", close: nil)
            context.close(promise: nil)
            return
        }
        let baseMetadata = metadata
        let started = NIODeadline.now()
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        dialing = true
        if readWithheld {
            readWithheld = false
            context.read()
        }
        connector.connectTunnel(to: destination, on: context.eventLoop, holdingReads: settings.mayInspect(ip))
            .whenComplete { result in
            let (handler, context) = loopBound.value
            handler.dialing = false
            var metadata = baseMetadata
            switch result {
            case .success(let upstream):
                guard !handler.clientClosed else {
                    upstream.close(promise: nil)
                    return
                }
                metadata.resolvedIP = upstream.remoteAddress?.ipAddress
                handler.relay(upstream: upstream, destination: destination, metadata: metadata, started: started, context: context)
            case .failure(let error):
                let failure = handler.connector.classify(error)
                metadata.outcome = .failed
                metadata.error = failure.reason
                // What the client sent meanwhile names what it asked for, as a relayed connection's record would.
                var target = destination.description
                if let held = handler.held, held.readableBytes > 0 {
                    var peek = ClientHelloPeek(limit: handler.settings.clientHelloLimit)
                    if case .done(let seen) = peek.feed(held), let named = TunnelSession.note(seen, in: &metadata) {
                        target = named
                        // Judged as a relayed connection's name would be (a block, or observe mode's would_block).
                        _ = handler.reporting.judge(&metadata, host: metadata.host, address: nil)
                    }
                }
                handler.reporting.action(
                    target: target, metadata: metadata,
                    verdict: failure.blocked ? Reporting.blocked(failure.reason) : .observed)
                handler.reporting.logConnection(
                    metadata, target: target, mode: "none", close: nil, blockedByProxy: failure.blocked)
                context.close(promise: nil)
            }
        }
    }

    private func relay(
        upstream: any Channel,
        destination: Destination,
        metadata: ConnectMetadata,
        started: NIODeadline,
        context: ChannelHandlerContext
    ) {
        if let inspection = settings.inspection, settings.mayInspect(destination.host) {
            // With a CA, transparent connections are inspected exactly as CONNECT ones are.
            let start = InspectionStartHandler(
                tunnel: .init(upstream: upstream, destination: destination, metadata: metadata, started: started),
                inspection: inspection, settings: settings, reporting: reporting)
            do {
                try context.pipeline.syncOperations.addHandler(start, position: .after(self))
            } catch {
                reporting.logger.error("cannot set up a transparent tunnel", metadata: ["error": "\(error)"])
                upstream.close(promise: nil)
                context.close(promise: nil)
                return
            }
            handOverHeldBytes(context: context)
            return
        }
        let (session, clientGlue, upstreamGlue) = GlueHandler.tunnel(
            reporting: reporting, metadata: metadata, destination: destination, started: started,
            settings: settings, eventLoop: context.eventLoop)
        let connector = self.connector
        let eventLoop = context.eventLoop
        session.nameBelongs = { name in connector.name(name, resolvesTo: destination.host, on: eventLoop) }
        do {
            try upstream.pipeline.syncOperations.addHandler(upstreamGlue)
            try context.pipeline.syncOperations.addHandler(clientGlue, position: .after(self))
        } catch {
            reporting.logger.error("cannot set up a transparent tunnel", metadata: ["error": "\(error)"])
            upstream.close(promise: nil)
            context.close(promise: nil)
            return
        }
        session.start()
        handOverHeldBytes(context: context)
    }

    /// Passes what the client sent meanwhile to the handler that took over, and leaves the pipeline.
    private func handOverHeldBytes(context: ChannelHandlerContext) {
        if let held, held.readableBytes > 0 {
            self.held = nil
            context.fireChannelRead(wrapInboundOut(held))
            context.fireChannelReadComplete()
        }
        if clientHalfClosed { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        if readWithheld {
            readWithheld = false
            context.channel.read()
        }
    }

    private static let loopLogged = Mutex(false)

    static func logLoopOnce(_ logger: Logger, ip: String, port: Int) {
        let first = loopLogged.withLock { logged in
            defer { logged = true }
            return !logged
        }
        guard first else { return }
        logger.error(
            "transparent listener: a connection whose original destination is the proxy itself was refused (check the iptables rules exclude the proxy's own UID and ports); logged once",
            metadata: ["original_dst": "\(Destination(host: ip, port: port, isIPLiteral: true))"])
    }
}

@available(*, unavailable)
extension TransparentHandler: Sendable {}

import Audit
import ControlPlane
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Telemetry

/// The transparent listener could not be bound.
public struct TransparentBindError: Error, Sendable {
    public var port: Int
    public var underlying: any Error
}

/// The proxy listener as a `Service`: binds, accepts client connections and gives each an HTTP pipeline
/// ending in a `ProxyFrontHandler`. On graceful shutdown it stops accepting, lets open connections finish
/// for the drain period, then closes the rest (recording them as closed by the proxy at shutdown).
public final class ProxyServer: Service {
    let configuration: ProxyConfiguration
    private let reporting: Reporting
    private let group: any EventLoopGroup
    private let logger: Logger
    private let onListening: (@Sendable (SocketAddress) -> Void)?
    private let tracker: ConnectionTracker
    private let boundChannel = NIOLockedValueBox<(any Channel)?>(nil)
    /// The transparent listeners: one per address family (iptables redirects IPv4 and IPv6 to each's own).
    private let transparentChannels = NIOLockedValueBox<[any Channel]>([])
    /// Name lookups for upstream connections; started with the server, shut down when it stops.
    private let resolverPool: NIOThreadPool
    private let dnsCache: DNSCache
    /// What SIGHUP may replace; read by each new connection.
    let live: LiveSettings
    /// The destination guard, with every listener of this proxy added as it is bound.
    private let destinationCheck: DestinationCheck

    /// - Parameter onListening: called once the listener is bound, with its address (port 0 becomes the real
    ///   port); tests use it to find the proxy.
    public convenience init(
        configuration: ProxyConfiguration,
        sink: any ActionSink,
        logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        onListening: (@Sendable (SocketAddress) -> Void)? = nil
    ) {
        self.init(
            configuration: configuration, sink: sink, logger: logger, group: group, inspection: nil,
            onListening: onListening)
    }

    /// - Parameter inspection: present when a customer CA is configured.
    init(
        configuration: ProxyConfiguration,
        sink: any ActionSink,
        logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        inspection: Inspection?,
        baseline: DestinationBaseline? = nil,
        policy: PolicyCheck? = nil,
        metrics: ProxyMetrics? = nil,
        onListening: (@Sendable (SocketAddress) -> Void)? = nil
    ) {
        self.live = LiveSettings(
            .init(inspection: inspection, allowedClients: configuration.allowedClients, credentials: configuration.proxyCredentials))
        self.configuration = configuration
        self.destinationCheck = DestinationCheck(configuration)
        self.tracker = ConnectionTracker(
            maxConnections: configuration.maxConnections, maxPerClient: configuration.maxConnectionsPerClient)
        self.reporting = Reporting(
            agent: configuration.agent, sink: sink, logger: logger, baseline: baseline, policy: policy, metrics: metrics,
            structuredLogs: configuration.logFormat == .json)
        self.group = group
        self.logger = logger
        self.onListening = onListening
        self.dnsCache = DNSCache(ttl: configuration.dnsCacheTTL)
        self.resolverPool = NIOThreadPool(numberOfThreads: configuration.resolverThreads)
        self.resolverPool.start()
    }

    deinit {
        resolverPool.shutdownGracefully { _ in }
    }

    /// Client connections open now.
    var openConnections: Int { tracker.count }

    /// Whether the listener is bound and accepting (not before `bind`, not once shutdown began).
    var isAccepting: Bool { boundChannel.withLockedValue { $0?.isActive ?? false } }

    /// Records a listener of the proxy's own (the admin one), so the proxy never dials it.
    func addOwnListener(_ address: SocketAddress?) {
        destinationCheck.addListener(address)
    }

    /// Binds the listener, so a taken port or a bad address fails before any service starts. `run` calls it
    /// when it has not been called.
    @discardableResult
    public func bind() async throws -> SocketAddress? {
        if let channel = boundChannel.withLockedValue({ $0 }) { return channel.localAddress }
        var made = ConnectionSettings(configuration, resolverPool: resolverPool, dnsCache: dnsCache)
        let destinationCheck = self.destinationCheck
        made.destinationCheck = destinationCheck
        let reporting = self.reporting
        let live = self.live
        made.live = live
        let settings = made  // what every connection starts from (with the live snapshot of its moment)
        let admission = ClientAdmission(tracker: tracker, logger: logger, metrics: reporting.metrics)
        let serverChannel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                let snapshot = live.current
                switch admission.admit(channel, allowed: snapshot.allowedClients) {
                case .outsideAllowedClients: return channel.close()
                case .busy: return Self.refuseBusy(channel)
                case nil: break
                }
                do {
                    try Self.configurePipeline(channel, settings: settings.taking(snapshot), reporting: reporting)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .bind(host: configuration.listenAddress, port: configuration.port)
            .get()
        boundChannel.withLockedValue { $0 = serverChannel }
        destinationCheck.addListener(serverChannel.localAddress)
        if let transparentPort = configuration.transparentPort {
            let bootstrap = ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    // A transparent connection is not HTTP: any refusal just closes it.
                    let snapshot = live.current
                    guard admission.admit(channel, allowed: snapshot.allowedClients) == nil else { return channel.close() }
                    do {
                        try channel.pipeline.syncOperations.addHandler(
                            TransparentHandler(settings: settings.taking(snapshot), reporting: reporting))
                        return channel.eventLoop.makeSucceededVoidFuture()
                    } catch {
                        return channel.eventLoop.makeFailedFuture(error)
                    }
                }
            for (index, address) in Self.transparentAddresses(for: configuration.listenAddress).enumerated() {
                do {
                    var bound = bootstrap
                    if address.contains(":") {
                        // Only IPv6 on the IPv6 socket, so the IPv4 one can hold the same port.
                        bound = bound.serverChannelOption(
                            ChannelOptions.Types.SocketOption(level: .ipv6, name: .ipv6_v6only), value: 1)
                    }
                    let channel = try await bound.bind(host: address, port: transparentPort).get()
                    transparentChannels.withLockedValue { $0.append(channel) }
                    destinationCheck.addListener(channel.localAddress)
                } catch {
                    if index == 0 {
                        try? await serverChannel.close()
                        throw TransparentBindError(port: transparentPort, underlying: error)
                    }
                    // The other family may not exist here (no IPv6): its traffic is not redirected then either.
                    logger.notice(
                        "transparent listener: not on \(address) (\(error)); only the other address family is served")
                }
            }
        }
        return serverChannel.localAddress
    }

    /// Over the connection limits: a 503 the client can read, then close (written once the channel is active).
    static func refuseBusy(_ channel: any Channel) -> EventLoopFuture<Void> {
        do {
            try channel.pipeline.syncOperations.addHandler(BusyResponder())
            return channel.eventLoop.makeSucceededVoidFuture()
        } catch {
            return channel.close()
        }
    }

    /// The start-up warning for a proxy anyone on the network could use: a non-loopback listener with neither
    /// `KAIZEN_ALLOW_CLIENTS` nor `KAIZEN_PROXY_AUTH`.
    static func exposureWarning(_ configuration: ProxyConfiguration) -> String? {
        let loopback = configuration.listenAddress == "::1" || configuration.listenAddress.hasPrefix("127.")
        guard !loopback, configuration.allowedClients == nil, configuration.proxyCredentials == nil else { return nil }
        return "listening on \(configuration.listenAddress) with no client restriction: anyone who can reach this port can use the proxy; set KAIZEN_ALLOW_CLIENTS to the agents' addresses or KAIZEN_PROXY_AUTH to a credentials file"
    }

    /// The listen address and its counterpart in the other family: iptables REDIRECT sends IPv4 to 127.0.0.1
    /// and IPv6 to ::1 (or to the interface's address, which a wildcard covers).
    static func transparentAddresses(for listen: String) -> [String] {
        switch listen {
        case "127.0.0.1": ["127.0.0.1", "::1"]
        case "::1": ["::1", "127.0.0.1"]
        case "0.0.0.0": ["0.0.0.0", "::"]
        case "::": ["::", "0.0.0.0"]
        default: [listen]
        }
    }

    public func run() async throws {
        try await bind()
        guard let serverChannel = boundChannel.withLockedValue({ $0 }) else { return }
        let address = serverChannel.localAddress
        logger.info(
            "proxy listening on \(Reporting.describe(address))",
            metadata: ["agent": "\(configuration.agent)", "local": "\(configuration.local)"]
        )
        if let address { onListening?(address) }
        if let warning = Self.exposureWarning(configuration) {
            logger.warning("\(warning)")
        }

        let transparent = transparentChannels.withLockedValue { $0 }
        for channel in transparent {
            logger.info("transparent listener on \(Reporting.describe(channel.localAddress))")
        }
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                try await serverChannel.closeFuture.get()
            } onGracefulShutdown: {
                serverChannel.close(promise: nil)
                for channel in transparent { channel.close(promise: nil) }
            }
        } onCancel: {
            serverChannel.close(promise: nil)
            for channel in transparent { channel.close(promise: nil) }
        }
        for channel in transparent { try? await channel.close() }
        await drain()
    }

    /// Asks open connections to finish, waits up to the drain period, then closes what is left.
    private func drain() async {
        let open = tracker.count
        guard open > 0 else { return }
        logger.info("draining open connections", metadata: ["connections": "\(open)"])
        tracker.fireEvent(ChannelShouldQuiesceEvent())
        let drainNanos = configuration.drainTimeout.nanoseconds
        if await tracker.waitUntilEmpty(timeout: .nanoseconds(drainNanos)) { return }
        logger.info("closing connections left after the drain period", metadata: ["connections": "\(tracker.count)"])
        tracker.fireEvent(ProxyShutdownEvent())
        _ = await tracker.waitUntilEmpty(timeout: .seconds(5))
    }

    static func configurePipeline(
        _ channel: any Channel,
        settings: ConnectionSettings,
        reporting: Reporting
    ) throws {
        // Built by hand rather than with `configureHTTPServerPipeline`: responses go out through the proxy's own
        // encoder, which writes relayed framing as the upstream gave it (NIO's rewrites `Transfer-Encoding`); the
        // decoder hands on the bytes it holds after a CONNECT head instead of dropping them; pipelined requests
        // wait for the response before them. Outbound header validation is not wanted: the heads written here
        // are the proxy's own or forwarded from an upstream whose header block llhttp already refused if it held
        // CR, LF or NUL.
        let decoder = HTTPRequestDecoder(
            leftOverBytesStrategy: .forwardBytes, informationalResponseStrategy: .drop,
            limitConfiguration: settings.requestHeadLimits.decoderConfiguration)
        try channel.pipeline.syncOperations.addHandlers([
            RelayedResponseEncoder(),
            ByteToMessageHandler(decoder),
            HTTPServerPipelineHandler(),
        ])
        // In front of the decoder: limits each request head while it arrives, before anything buffers it.
        try channel.pipeline.syncOperations.addHandler(
            RequestHeadLimitHandler(limits: settings.requestHeadLimits), position: .first)
        try channel.pipeline.syncOperations.addHandler(ProxyFrontHandler(settings: settings, reporting: reporting))
    }
}

/// Answers 503 and closes, for a connection past the limits.
private final class BusyResponder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        let body = "too many open connections; try again later\n"
        var response = context.channel.allocator.buffer(capacity: 256)
        response.writeString("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n")
        response.writeString("Content-Length: \(body.utf8.count)\r\nConnection: close\r\nRetry-After: 1\r\n")
        response.writeString("Proxy-Status: kaizen-egress; error=proxy_internal_error\r\n\r\n\(body)")
        let channel = context.channel
        context.writeAndFlush(NIOAny(response)).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}  // whatever the client sent is not read
}

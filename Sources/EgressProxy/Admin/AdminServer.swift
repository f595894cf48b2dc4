import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The admin listener (`KAIZEN_ADMIN_LISTEN`, apart from the proxy port): `GET /metrics` (Prometheus text
/// format), `GET /healthz` (the process answers) and `GET /readyz` (ready to take traffic, or 503 with the
/// reasons, one per line). Nothing else; no request body is read.
public final class AdminServer: Service, Sendable {
    public struct Endpoints: Sendable {
        /// Called before each scrape to bring the gauges up to date, then the exposition.
        var metrics: @Sendable () -> [UInt8]
        /// Why the proxy is not ready; empty when it is.
        var readiness: @Sendable () -> [String]
    }

    private let host: String
    private let port: Int
    private let endpoints: Endpoints
    private let logger: Logger
    private let group: any EventLoopGroup
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)
    /// Admin connections open now.
    private let open = NIOLockedValueBox(0)
    static let maxConnections = 64
    static let idleTimeout = TimeAmount.seconds(30)
    static let maxLifetime = TimeAmount.minutes(2)
    private let onListening: (@Sendable (SocketAddress) -> Void)?

    init(
        host: String,
        port: Int,
        endpoints: Endpoints,
        logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        onListening: (@Sendable (SocketAddress) -> Void)? = nil
    ) {
        self.host = host
        self.port = port
        self.endpoints = endpoints
        self.logger = logger
        self.group = group
        self.onListening = onListening
    }

    /// Binds the listener (so a taken port stops the proxy before it starts); `run` binds when this was not called.
    @discardableResult
    public func bind() async throws -> SocketAddress? {
        if let bound = channel.withLockedValue({ $0 }) { return bound.localAddress }
        let endpoints = self.endpoints
        let bound = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // A request followed by the client's FIN (`nc -N`, `socat` health checks) is still answered, then closed.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { [open] channel in
                // Bounded like the proxy's own listener, since it may face the pod network: a few connections,
                // small heads, and none kept open by a slow or idle client.
                guard open.withLockedValue({ count in
                    guard count < Self.maxConnections else { return false }
                    count += 1
                    return true
                }) else {
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in open.withLockedValue { $0 -= 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    var limits = RequestHeadLimits()
                    limits.requestLine = 1024
                    limits.headerBytes = 8192
                    limits.headerFields = 32
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withPipeliningAssistance: true, withServerUpgrade: nil, withErrorHandling: true,
                        withOutboundHeaderValidation: true, withEncoderConfiguration: .init(),
                        withDecoderLimitConfiguration: limits.decoderConfiguration)
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: Self.idleTimeout))
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(endpoints: endpoints))
                    channel.eventLoop.scheduleTask(in: Self.maxLifetime) { channel.close(promise: nil) }
                }
            }
            .bind(host: host, port: port)
            .get()
        channel.withLockedValue { $0 = bound }
        return bound.localAddress
    }

    public func run() async throws {
        try await bind()
        guard let bound = channel.withLockedValue({ $0 }) else { return }
        logger.info("admin listener on \(Reporting.describe(bound.localAddress)) (/metrics, /healthz, /readyz)")
        if let address = bound.localAddress { onListening?(address) }
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                try await bound.closeFuture.get()
            } onGracefulShutdown: {
                bound.close(promise: nil)
            }
        } onCancel: {
            bound.close(promise: nil)
        }
    }
}

/// Answers one admin request at a time.
final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let endpoints: AdminServer.Endpoints
    private var head: HTTPRequestHead?
    /// Requests read and not answered yet.
    private var unanswered = 0
    /// The client sent its FIN: once what it asked is answered, the connection closes (else it would wait, half
    /// closed, for the idle timeout, holding one of the listener's few connections).
    private var inputEnded = false

    init(endpoints: AdminServer.Endpoints) {
        self.endpoints = endpoints
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        if case ChannelEvent.inputClosed = event {
            inputEnded = true
            if unanswered == 0 { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head else { return }
            self.head = nil
            unanswered += 1
            // Answered off the event loop: a scrape reads the reporter's backlog under the spool's lock, which a
            // stuck disk can hold; the proxy's connections share these loops.
            let endpoints = self.endpoints
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) {
                Self.answer(head, endpoints: endpoints)
            }.whenComplete { result in
                let (handler, context) = loopBound.value
                switch result {
                case .success(let answer): handler.write(answer, for: head, context: context)
                case .failure: context.close(promise: nil)
                }
            }
        }
    }

    private func write(_ answer: (HTTPResponseStatus, String, [UInt8]), for head: HTTPRequestHead, context: ChannelHandlerContext) {
        let (status, contentType, body) = answer
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Cache-Control", value: "no-store")
        if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let keepAlive = head.isKeepAlive
        unanswered -= 1
        let lastBeforeEnd = inputEnded && unanswered == 0
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive || lastBeforeEnd { context.close(promise: nil) }
        }
    }

    private static func answer(_ head: HTTPRequestHead, endpoints: AdminServer.Endpoints) -> (HTTPResponseStatus, String, [UInt8]) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        guard head.method == .GET || head.method == .HEAD else {
            return (.methodNotAllowed, "text/plain; charset=utf-8", Array("only GET\n".utf8))
        }
        switch path {
        case "/metrics":
            return (.ok, "text/plain; version=0.0.4; charset=utf-8", endpoints.metrics())
        case "/healthz":
            return (.ok, "text/plain; charset=utf-8", Array("ok\n".utf8))
        case "/readyz":
            let problems = endpoints.readiness()
            if problems.isEmpty { return (.ok, "text/plain; charset=utf-8", Array("ready\n".utf8)) }
            return (.serviceUnavailable, "text/plain; charset=utf-8", Array((problems.joined(separator: "\n") + "\n").utf8))
        default:
            return (.notFound, "text/plain; charset=utf-8", Array("not found: /metrics, /healthz, /readyz\n".utf8))
        }
    }
}

@available(*, unavailable)
extension AdminHandler: Sendable {}

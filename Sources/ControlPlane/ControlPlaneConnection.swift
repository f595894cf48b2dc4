import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOTLS
import OpenSSLTLS

/// The control plane's answer to one request.
public struct ControlPlaneResponse: Sendable, Hashable {
    public var status: Int
    /// `Retry-After`, as sent (seconds or an HTTP date), on 429 and 503.
    public var retryAfter: String?
    /// `ETag`, as sent.
    public var etag: String?
    /// The body, up to the request's limit (64 KiB by default: enough for a 400's reason).
    public var bytes: [UInt8]
    /// Whether the body was longer than the limit (and `bytes` holds its beginning only).
    public var truncated: Bool
    /// Whether the control plane closes the connection after this answer (`Connection: close`, HTTP/1.0 without
    /// keep-alive): requests pipelined behind it on the same connection get no answer.
    public var closesConnection: Bool = false

    public var body: String { String(decoding: bytes, as: UTF8.self) }
}

/// The control plane did not answer in time: the connection is closed and the requests on it fail.
public struct ControlPlaneTimeout: Error, Sendable, CustomStringConvertible {
    public var what: String
    public var description: String { "no \(what) from the control plane in time" }
}

/// One keep-alive HTTP/1.1 connection to the control plane, over the project's own TLS (verified) or, for a
/// loopback control plane, plain TCP. Requests may be pipelined; answers come back in order.
public final class ControlPlaneConnection: Sendable {
    private let channel: any Channel
    private let handler: NIOLoopBound<ResponseHandler>
    private let endpoint: ControlPlaneEndpoint

    private init(channel: any Channel, handler: NIOLoopBound<ResponseHandler>, endpoint: ControlPlaneEndpoint) {
        self.channel = channel
        self.handler = handler
        self.endpoint = endpoint
    }

    /// Connects and, with TLS, completes the verified handshake; a verification failure is thrown here.
    /// - Parameter responseTimeout: how long the control plane may take to answer one request, counted from when
    ///   the answers before it on this connection came (it answers pipelined requests one after the other), so a
    ///   request queued behind others is not given up for their time. When it runs out, the connection is closed
    ///   and every request waiting on it fails with `ControlPlaneTimeout`.
    public static func connect(
        to endpoint: ControlPlaneEndpoint,
        tls: OpenSSLContext?,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        connectTimeout: TimeAmount = .seconds(10),
        responseTimeout: TimeAmount = .seconds(30)
    ) async throws -> ControlPlaneConnection {
        let loop = group.next()
        let box = NIOLockedValueBox<NIOLoopBound<ResponseHandler>?>(nil)
        let channel = try await ClientBootstrap(group: loop)
            .connectTimeout(connectTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                do {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(
                            try OpenSSLTLSHandler(context: tls, serverName: endpoint.host)
                        )
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    // The TLS handshake gets the connect timeout too: a server that accepts and then says nothing
                    // fails. The handler arms it when the connection is up, on the event loop, so it runs however
                    // late the task awaiting the connection resumes.
                    let handler = ResponseHandler(
                        ready: channel.eventLoop.makePromise(), expectsTLS: tls != nil, handshakeTimeout: connectTimeout,
                        answerTimeout: responseTimeout)
                    try channel.pipeline.syncOperations.addHandler(handler)
                    box.withLockedValue { $0 = NIOLoopBound(handler, eventLoop: channel.eventLoop) }
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(host: endpoint.host, port: endpoint.port)
            .get()
        guard let handler = box.withLockedValue({ $0 }) else { throw ChannelError.inappropriateOperationForState }
        let ready = try await loop.submit { handler.value.ready.futureResult }.get()
        do {
            try await ready.get()
        } catch {
            try? await channel.close()
            throw error
        }
        return ControlPlaneConnection(channel: channel, handler: handler, endpoint: endpoint)
    }

    /// POSTs `json` to `path` (e.g. `/v1/verdicts`) with the bearer key and waits for the answer.
    public func post(path: String, json: [UInt8], apiKey: String) async throws -> ControlPlaneResponse {
        try await send(method: .POST, path: path, json: json, apiKey: apiKey, headers: [:], bodyLimit: 64 * 1024)
    }

    /// GETs `path` (with its query) with the bearer key and `headers` (e.g. `If-None-Match`); the answer's body
    /// is kept up to `bodyLimit` bytes.
    public func get(path: String, apiKey: String, headers: [String: String] = [:], bodyLimit: Int) async throws
        -> ControlPlaneResponse
    {
        try await send(method: .GET, path: path, json: nil, apiKey: apiKey, headers: headers, bodyLimit: bodyLimit)
    }

    private func send(
        method: HTTPMethod,
        path: String,
        json: [UInt8]?,
        apiKey: String,
        headers extra: [String: String],
        bodyLimit: Int
    ) async throws -> ControlPlaneResponse {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: endpoint.hostHeader)
        headers.add(name: "Authorization", value: "Bearer \(apiKey)")
        if let json {
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: "\(json.count)")
        }
        headers.add(name: "User-Agent", value: "kaizen-egress")
        for (name, value) in extra.sorted(by: { $0.key < $1.key }) { headers.add(name: name, value: value) }
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: endpoint.basePath + path, headers: headers)
        let channel = self.channel
        let handler = self.handler
        let body = json.map { channel.allocator.buffer(bytes: $0) }
        let answer = channel.eventLoop.makePromise(of: ControlPlaneResponse.self)
        channel.eventLoop.execute {
            guard channel.isActive else {
                answer.fail(handler.value.closeReason ?? ChannelError.ioOnClosedChannel)
                return
            }
            handler.value.expect(answer, bodyLimit: bodyLimit, channel: channel)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        return try await answer.futureResult.get()
    }

    public var isOpen: Bool { channel.isActive }

    public func close() async {
        try? await channel.close()
    }
}

/// Collects each response and completes the promise of the request it answers (first in, first out).
final class ResponseHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    /// Succeeds once requests can be sent (after the TLS handshake); fails with the handshake's error.
    let ready: EventLoopPromise<Void>
    private var readyDone = false
    /// The error that ended the connection, given to requests made after it.
    private(set) var closeReason: (any Error)?
    private var waiting: [(promise: EventLoopPromise<ControlPlaneResponse>, bodyLimit: Int)] = []
    private var head: HTTPResponseHead?
    private var body: [UInt8] = []
    private var truncated = false

    private let expectsTLS: Bool

    /// How long the TLS handshake may take once the connection is up.
    private let handshakeTimeout: TimeAmount
    private var handshakeTimer: Scheduled<Void>?

    /// How long the request at the head of `waiting` may wait for its answer. Its timer starts when it gets there
    /// (sent on an idle connection, or the answer before it came): the control plane answers a connection's requests
    /// one after the other, so timing each from when it was sent would give up on the last of a pipeline for the
    /// time the others took.
    private let answerTimeout: TimeAmount
    private var answerTimer: Scheduled<Void>?

    init(ready: EventLoopPromise<Void>, expectsTLS: Bool, handshakeTimeout: TimeAmount, answerTimeout: TimeAmount) {
        self.ready = ready
        self.expectsTLS = expectsTLS
        self.handshakeTimeout = handshakeTimeout
        self.answerTimeout = answerTimeout
    }

    func channelActive(context: ChannelHandlerContext) {
        connectionIsUp(context: context)
        context.fireChannelActive()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { connectionIsUp(context: context) }
    }

    private func connectionIsUp(context: ChannelHandlerContext) {
        guard !readyDone else { return }
        guard expectsTLS else { return markReady(nil) }
        guard handshakeTimer == nil else { return }
        let channel = context.channel
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.scheduleTask(in: handshakeTimeout) {
            handler.value.timeOut(ControlPlaneTimeout(what: "TLS handshake"), channel: channel)
        }
    }

    /// A connection that never became active (refused) still completes every promise.
    func handlerRemoved(context: ChannelHandlerContext) {
        let reason = closeReason ?? ChannelError.ioOnClosedChannel
        markReady(reason)
        failAll(reason)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event { markReady(nil) }
        context.fireUserInboundEventTriggered(event)
    }

    private func markReady(_ error: (any Error)?) {
        guard !readyDone else { return }
        readyDone = true
        handshakeTimer?.cancel()
        handshakeTimer = nil
        if let error { ready.fail(error) } else { ready.succeed(()) }
    }

    /// Gives up on the connection: everything waiting fails with `error`.
    func timeOut(_ error: any Error, channel: any Channel) {
        if closeReason == nil { closeReason = error }
        // Closed first, so whoever the failures wake finds the connection closed.
        channel.close(promise: nil)
        markReady(error)
        failAll(error)
    }

    func expect(_ promise: EventLoopPromise<ControlPlaneResponse>, bodyLimit: Int, channel: any Channel) {
        waiting.append((promise, bodyLimit))
        if waiting.count == 1 { timeHead(channel: channel) }
    }

    /// Starts the answer timer of the request now at the head of `waiting` (none when nothing waits).
    private func timeHead(channel: any Channel) {
        answerTimer?.cancel()
        answerTimer = nil
        guard !waiting.isEmpty else { return }
        let handler = NIOLoopBound(self, eventLoop: channel.eventLoop)
        answerTimer = channel.eventLoop.scheduleTask(in: answerTimeout) {
            handler.value.timeOut(ControlPlaneTimeout(what: "answer"), channel: channel)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body = []
            truncated = false
        case .body(let bytes):
            let room = max(0, (waiting.first?.bodyLimit ?? 0) - body.count)
            if bytes.readableBytes > room { truncated = true }
            body += bytes.readableBytesView.prefix(room)
        case .end:
            guard let head, !waiting.isEmpty else { return }
            let promise = waiting.removeFirst().promise
            // Closed before the answer is handed over, so whoever it wakes finds the connection closed (and
            // the requests pipelined behind it already failed), never one that looks open but is not.
            if head.isKeepAlive {
                timeHead(channel: context.channel)  // the next request's turn starts now
            } else {
                answerTimer?.cancel()
                answerTimer = nil
                context.close(promise: nil)
            }
            promise.succeed(
                ControlPlaneResponse(
                    status: Int(head.status.code),
                    retryAfter: head.headers.first(name: "retry-after"),
                    etag: head.headers.first(name: "etag"),
                    bytes: body,
                    truncated: truncated,
                    closesConnection: !head.isKeepAlive
                )
            )
            self.head = nil
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if closeReason == nil { closeReason = error }
        markReady(error)
        failAll(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let reason = closeReason ?? ChannelError.ioOnClosedChannel
        markReady(reason)
        failAll(reason)
        context.fireChannelInactive()
    }

    private func failAll(_ error: any Error) {
        answerTimer?.cancel()
        answerTimer = nil
        let promises = waiting
        waiting = []
        for entry in promises { entry.promise.fail(error) }
    }
}

@available(*, unavailable)
extension ResponseHandler: Sendable {}

import NIOCore
import NIOHTTP1
import NIOTLS
import OpenSSLTLS

/// The client side of an intercepted connection, above the TLS server and the HTTP/1.1 codec: requests in,
/// responses out. Reads only while the upstream can take more and no complete request awaits its response.
/// Requests that came in the same read as an earlier one (pipelined) are held until it has been answered.
final class InterceptedClientHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = ByteBuffer

    private let connection: InterceptedConnection
    private var context: ChannelHandlerContext?
    /// Told when an exchange ends, so it limits the next request head.
    private var headLimiter: RequestHeadLimitHandler?
    /// Responses as the upstream framed them; told which method each answers (a response to HEAD has no body).
    /// Here rather than in a handler of its own: a part passed between handlers costs a dynamic cast.
    private var serializer = RelayedResponseSerializer()

    /// The next bytes from the client start a new request head.
    func expectNextHead() { headLimiter?.expectNextHead() }
    private var pendingRead = false
    /// Request parts that arrived while a complete request awaited its response (pipelined: sent in the same
    /// read), passed on in order once it has been answered. No read is asked for while any are held, so they
    /// are at most what one read brought.
    private var heldParts = CircularBuffer<HTTPServerRequestPart>()
    private var deliveringHeldParts = false

    init(connection: InterceptedConnection) {
        self.connection = connection
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        headLimiter = try? context.pipeline.syncOperations.handler(type: RequestHeadLimitHandler.self)
        connection.attach(client: self)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if heldParts.isEmpty && connection.mayReadClient {
            connection.fromClient(part)
        } else {
            // The head limiter passed these bytes after the earlier head, unscanned: from here the decoder's
            // limits apply, as for any pipelined request.
            if heldParts.isEmpty { headLimiter?.lostTrackOfHeads() }
            heldParts.append(part)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        connection.clientReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            connection.clientHandshakeCompleted()
        } else {
            connection.lifecycleEvent(event, clientSide: true, context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let limit = error as? RequestLimitError {
            connection.clientBrokeLimit(limit)
        } else if let parserError = error as? HTTPParserError {
            connection.clientSentMalformedRequest(parserError)
        } else {
            connection.clientFailed(error)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.clientClosed()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { connection.upstream?.partnerWritable() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if mayRead {
            context.read()
        } else {
            pendingRead = true
        }
    }

    private var mayRead: Bool {
        heldParts.isEmpty && connection.mayReadClient && (connection.upstream?.isWritable ?? false)
    }

    // MARK: calls from the connection

    var isWritable: Bool { context?.channel.isWritable ?? false }

    /// The last response end written, so a close can wait for the response to go out.
    private var lastWrite: EventLoopFuture<Void>?

    func send(_ part: HTTPServerResponsePart, flush: Bool = false) {
        guard let context else { return }
        if case .end = part {
            // One promise per response (not per part): what a close after this response waits for.
            let promise = context.eventLoop.makePromise(of: Void.self)
            lastWrite = promise.futureResult
            serializer.write(part, on: context, promise: promise)
        } else {
            serializer.write(part, on: context, promise: nil)
        }
        if flush { context.flush() }
    }

    /// A response part written through the pipeline (none is, but it would be relayed the same way).
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        serializer.write(unwrapOutboundIn(data), on: context, promise: promise)
    }

    func flush() { context?.flush() }

    /// The next response written answers a request with this method.
    func respondingTo(method: String) { serializer.requestMethod = method }

    /// The next request may be read (the last exchange ended, or the upstream drained): the parts held for it
    /// first.
    func resumeReading() {
        deliverHeldParts()
        if pendingRead, let context, mayRead {
            pendingRead = false
            context.read()
        }
    }

    /// The connection will close after the awaited response: held requests are never forwarded.
    func dropHeldParts() { heldParts.removeAll() }

    private func deliverHeldParts() {
        guard !heldParts.isEmpty, !deliveringHeldParts else { return }
        deliveringHeldParts = true
        defer { deliveringHeldParts = false }
        var delivered = false
        while connection.mayReadClient, let part = heldParts.popFirst() {
            connection.fromClient(part)
            delivered = true
        }
        if delivered { connection.clientReadComplete() }
    }

    func partnerWritable() { resumeReading() }

    /// After a 101: the relay takes this handler's place and the HTTP codec leaves (its decoder hands any
    /// bytes it holds to the relay).
    func replace(with relay: UpgradedRelayHandler) throws {
        guard let context else { throw ChannelError.ioOnClosedChannel }
        let pipeline = context.pipeline.syncOperations
        try pipeline.addHandler(relay, position: .last)
        pipeline.removeHandler(context: context, promise: nil)
        if let decoder = try? pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self) {
            pipeline.removeHandler(decoder, promise: nil)
        }
    }

    func sendBadRequest(reason: String) {
        sendError(.badRequest, reason: "bad request: \(reason)")
    }

    /// An error the proxy answers itself, then closes.
    func sendError(_ status: HTTPResponseStatus, reason: String) {
        guard let context else { return }
        let body = "kaizen-egress: \(reason)\n"
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: "\(body.utf8.count)")
        headers.add(name: "Connection", value: "close")
        send(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)))
        send(.body(.byteBuffer(context.channel.allocator.buffer(string: body))))
        // The end's write is `lastWrite`: a close asked for meanwhile waits for this answer too.
        send(.end(nil), flush: true)
        lastWrite?.whenComplete { _ in context.close(promise: nil) }
    }

    /// Closes once what was written has gone out. Without `notify` the client gets no close_notify: it cannot
    /// take the end of the connection for a confirmed end of what came before (a body cut short, or one whose
    /// end the upstream did not confirm either).
    func closeAfterWrites(notify: Bool = true) {
        guard let context else { return }
        context.flush()
        let close = { (context: ChannelHandlerContext) in
            if !notify { context.triggerUserOutboundEvent(TLSCloseWithoutNotify(), promise: nil) }
            context.close(promise: nil)
        }
        if let lastWrite {
            lastWrite.whenComplete { _ in close(context) }
        } else {
            close(context)
        }
    }

    /// Closes now; without `notify`, without close_notify (see `closeAfterWrites`), after handing the socket
    /// what was relayed of a response being cut: the client gets that part and then an unclean end, rather
    /// than nothing.
    func close(notify: Bool = true) {
        guard let context else { return }
        if !notify {
            context.flush()
            context.triggerUserOutboundEvent(TLSCloseWithoutNotify(), promise: nil)
        }
        context.close(promise: nil)
    }
}

/// The upstream side: requests out over the verified TLS client, responses in.
final class InterceptedUpstreamHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    private let connection: InterceptedConnection
    private var context: ChannelHandlerContext?
    private var pendingRead = false

    init(connection: InterceptedConnection) {
        self.connection = connection
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        connection.attach(upstream: self)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection.fromUpstream(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        connection.upstreamReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is TLSClosedWithoutNotify { connection.upstreamClosedWithoutNotify() }
        connection.lifecycleEvent(event, clientSide: false, context: context)
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        connection.upstreamFailed(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.upstreamClosed()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { connection.client?.partnerWritable() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if connection.client?.isWritable ?? false {
            context.read()
        } else {
            pendingRead = true
        }
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func send(_ part: HTTPClientRequestPart, flush: Bool = false) {
        guard let context else { return }
        if flush {
            context.writeAndFlush(wrapOutboundOut(part), promise: nil)
        } else {
            context.write(wrapOutboundOut(part), promise: nil)
        }
    }

    func flush() { context?.flush() }

    func partnerWritable() {
        if pendingRead, let context {
            pendingRead = false
            context.read()
        }
    }

    /// See `InterceptedClientHandler.replace(with:)`.
    func replace(with relay: UpgradedRelayHandler) throws {
        guard let context else { throw ChannelError.ioOnClosedChannel }
        let pipeline = context.pipeline.syncOperations
        try pipeline.addHandler(relay, position: .last)
        pipeline.removeHandler(context: context, promise: nil)
        if let encoder = try? pipeline.handler(type: RelayedRequestEncoder.self) {
            pipeline.removeHandler(encoder, promise: nil)
        }
        if let decoder = try? pipeline.handler(type: ByteToMessageHandler<HTTPResponseDecoder>.self) {
            pipeline.removeHandler(decoder, promise: nil)
        }
    }

    func close() {
        context?.close(promise: nil)
    }

    /// Leaves the pipeline (the connection gave the channel to the pool), handing on a read it held back.
    func leavePipeline() {
        guard let context else { return }
        if pendingRead {
            pendingRead = false
            context.read()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

@available(*, unavailable)
extension InterceptedClientHandler: Sendable {}

@available(*, unavailable)
extension InterceptedUpstreamHandler: Sendable {}

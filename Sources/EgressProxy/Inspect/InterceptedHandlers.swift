import HTTP1Codec
import NIOCore
import NIOHTTP1
import NIOTLS
import OpenSSLTLS

/// The client side of an intercepted connection, above the TLS server: request bytes in, decoded by the proxy's
/// own HTTP/1.1 codec (`HTTP1MessageDecoder`, strict), responses out. Reads only while the upstream can take more
/// and no complete request awaits its response. Bytes of a later request that came in the same read as an earlier
/// one (pipelined) wait undecoded until it has been answered; they are checked at once all the same, so a malformed
/// one is refused as it arrives (answered after the response before it).
final class InterceptedClientHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let connection: InterceptedConnection
    private var context: ChannelHandlerContext?
    private var decoder: HTTP1MessageDecoder
    /// How long a request head may take to arrive, from its first byte (408 past it).
    private let headerTimeout: TimeAmount
    /// When the head now arriving began; nil while no head is partly received.
    private var headStarted: NIODeadline?
    /// One timer per connection, set only while a head is partly received: most heads arrive in one read, and
    /// cost no clock reading at all.
    private var headTimer: Scheduled<Void>?
    /// Bytes from the client not decoded yet: the rest of a head or chunk line, or a later request.
    private var pending: ByteBuffer?
    /// Set once the input is refused (malformed) or the rest is to be dropped: nothing more is decoded.
    private var stopped = false
    private var decoding = false
    private var inputEnded = false
    /// Responses as the upstream framed them; told which method each answers (a response to HEAD has no body).
    private var writer = RelayedResponseWriter()

    private var pendingRead = false

    init(connection: InterceptedConnection, limits: RequestHeadLimits) {
        self.connection = connection
        self.headerTimeout = limits.headerTimeout
        self.decoder = HTTP1MessageDecoder(
            kind: .request,
            limits: .init(startLine: limits.requestLine, headerBytes: limits.headerBytes, fields: limits.headerFields))
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        allocator = context.channel.allocator
        connection.attach(client: self)
    }

    /// The channel's allocator, read once (`context.channel.allocator` goes through the channel existential).
    private var allocator = ByteBufferAllocator()

    func handlerRemoved(context: ChannelHandlerContext) {
        headTimer?.cancel()
        headTimer = nil
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !stopped else { return }
        var bytes = unwrapInboundIn(data)
        Self.append(&bytes, to: &pending)
        decodePending()
        timeHead()
    }

    /// Starts timing a head that is partly received, and stops when none is.
    private func timeHead() {
        guard !stopped, decoder.isInsideHead, connection.mayReadClient else {
            headStarted = nil
            return
        }
        guard headStarted == nil, let context else { return }
        let now = NIODeadline.now()
        headStarted = now
        if headTimer == nil { armHeadTimer(at: now + headerTimeout, context: context) }
    }

    private func armHeadTimer(at deadline: NIODeadline, context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        headTimer = context.eventLoop.scheduleTask(deadline: deadline) { loopBound.value.headTimerFired() }
    }

    private func headTimerFired() {
        headTimer = nil
        guard let started = headStarted, !stopped, let context else { return }
        let due = started + headerTimeout
        if NIODeadline.now() >= due {
            stopped = true
            pending = nil
            connection.clientBrokeLimit(.headerTimeout(headerTimeout))
        } else {
            armHeadTimer(at: due, context: context)
        }
    }

    /// Decodes and hands on what `pending` holds while the connection takes requests. Returns whether a part went.
    @discardableResult
    private func decodePending() -> Bool {
        guard !decoding else { return false }
        decoding = true
        defer { decoding = false }
        var delivered = false
        // Until the decoder needs more bytes.
        while !stopped, connection.mayReadClient {
            switch Self.next(&decoder, from: &pending) {
            case .part(let part):
                delivered = true
                connection.fromClient(part)
            case .needMore:
                return delivered
            case .invalid(let error):
                refuse(error)
                return delivered
            }
        }
        // Behind a request that asks to switch protocols, what follows may be the new protocol's: not looked at.
        if !stopped, pending != nil, !connection.mayReadClient, !connection.awaitsUpgrade { checkHeldBytes() }
        return delivered
    }

    /// Bytes that came past a request still awaiting its response: not decoded until it has been answered, but
    /// checked now (on a copy), so a malformed request is refused when it arrives, as the decoder would.
    private func checkHeldBytes() {
        var probe = decoder
        guard var buffer = pending else { return }
        for _ in 0..<1024 {
            switch probe.next(&buffer) {
            case .part: continue
            case .needMore: return
            case .invalid(let error):
                refuse(error)
                return
            }
        }
    }

    private func refuse(_ error: HTTP1ParseError) {
        stopped = true
        pending = nil
        switch error {
        case .startLineTooLong(let limit): connection.clientBrokeLimit(.requestLineTooLong(limit: limit))
        case .headerBlockTooLarge(let limit): connection.clientBrokeLimit(.headerBlockTooLarge(limit: limit))
        case .tooManyFields(let limit): connection.clientBrokeLimit(.tooManyHeaderFields(limit: limit))
        default: connection.clientSentMalformedRequest(error)
        }
    }

    /// The client's input ended (EOF or close_notify): a request cut short is refused as malformed, as it is
    /// on the proxy's own port; but not one whose response has ended already (an origin that answered before the
    /// body was all sent, 413 and close, say), which the client may stop sending (RFC 9112 §9.3).
    private func endOfInput() {
        guard !inputEnded, !stopped, !connection.awaitsUpgrade else { return }
        inputEnded = true
        if connection.clientStoppedAfterTheResponse() { return }
        var probe = decoder
        var buffer = pending ?? ByteBuffer()
        // Whatever waits undecoded behind an awaited response is looked at as if it had been decoded (up to a
        // point: past it, nothing is said about the rest).
        for _ in 0..<1024 {
            switch probe.next(&buffer) {
            case .part: continue
            case .invalid(let error): return refuse(error)
            case .needMore: break
            }
            if case .invalid(let error) = probe.inputEnded(buffer) { refuse(error) }
            return
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        connection.clientReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            connection.clientHandshakeCompleted()
        } else {
            if case ChannelEvent.inputClosed = event { endOfInput() }
            connection.lifecycleEvent(event, clientSide: true, context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        connection.clientFailed(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        endOfInput()
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
        connection.mayReadClient && (connection.upstream?.isWritable ?? false)
    }

    // MARK: calls from the connection

    var isWritable: Bool { context?.channel.isWritable ?? false }

    /// The last response end written, so a close can wait for the response to go out.
    private var lastWrite: EventLoopFuture<Void>?

    /// Writes a response part. When `tracked`, returns the write's future: it succeeds once the part's bytes are
    /// written to the client's connection (not when they are only handed to the TLS layer or NIO's buffers), and
    /// fails when the connection closes first.
    @discardableResult
    func send(_ part: RelayedResponsePart, flush: Bool = false, tracked: Bool = false) -> EventLoopFuture<Void>? {
        guard let context else { return nil }
        let promise: EventLoopPromise<Void>?
        if case .end = part {
            // One promise per response end (not per part): what a close after this response waits for.
            promise = context.eventLoop.makePromise(of: Void.self)
            lastWrite = promise!.futureResult
        } else {
            promise = tracked ? context.eventLoop.makePromise(of: Void.self) : nil
        }
        switch writer.serialize(part, allocator: allocator) {
        case .bytes(let bytes): context.write(wrapOutboundOut(bytes), promise: promise)
        case .nothing: promise?.succeed(())
        }
        if flush { context.flush() }
        return tracked ? promise?.futureResult : nil
    }

    func flush() { context?.flush() }

    /// Flushes, after an empty write whose future it returns: it succeeds once every write before it is written to
    /// the client's connection (writes complete in order), and fails when the connection closes first.
    func flush(tracked: Bool) -> EventLoopFuture<Void>? {
        guard let context else { return nil }
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.write(wrapOutboundOut(allocator.buffer(capacity: 0)), promise: promise)
        context.flush()
        return promise.futureResult
    }

    /// The next response written answers a request with this method.
    func respondingTo(method: String) { writer.requestMethod = method }

    /// The next request may be read (the last exchange ended, or the upstream drained): what waits undecoded first.
    func resumeReading() {
        if decodePending() { connection.clientReadComplete() }
        timeHead()
        if pendingRead, let context, mayRead {
            pendingRead = false
            context.read()
        }
    }

    /// The connection will close after the awaited response: requests waiting behind it are never forwarded.
    func dropHeldParts() {
        stopped = true
        pending = nil
    }

    func partnerWritable() { resumeReading() }

    /// After a 101: the relay takes this handler's place. Returns the bytes that came after the request (the new
    /// protocol's), for the relay to pass on once both sides' relays are in place.
    func replace(with relay: UpgradedRelayHandler) throws -> ByteBuffer? {
        guard let context else { throw ChannelError.ioOnClosedChannel }
        let pipeline = context.pipeline.syncOperations
        try pipeline.addHandler(relay, position: .last)
        let leftover = pending
        pending = nil
        stopped = true
        pipeline.removeHandler(context: context, promise: nil)
        return leftover
    }

    func sendBadRequest(reason: String) {
        sendError(.badRequest, reason: "bad request: \(reason)")
    }

    /// An error the proxy answers itself, then closes.
    func sendError(_ status: HTTPResponseStatus, reason: String) {
        guard let context else { return }
        let body = "kaizen-egress: \(reason)\n"
        var bytes = context.channel.allocator.buffer(capacity: 160 + body.utf8.count)
        bytes.writeString("HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\n")
        bytes.writeHTTPField(name: "Content-Type", value: "text/plain; charset=utf-8")
        bytes.writeHTTPField(name: "Content-Length", value: "\(body.utf8.count)")
        bytes.writeHTTPField(name: "Connection", value: "close")
        bytes.writeStaticString("\r\n")
        bytes.writeString(body)
        // This write is `lastWrite`: a close asked for meanwhile waits for this answer too.
        let promise = context.eventLoop.makePromise(of: Void.self)
        lastWrite = promise.futureResult
        context.writeAndFlush(wrapOutboundOut(bytes), promise: promise)
        lastWrite?.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
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
            lastWrite.assumeIsolated().whenComplete { _ in close(context) }
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

extension ChannelInboundHandler {
    /// Adds what was just read to what waits undecoded. The bytes already decoded are dropped first: a peer whose
    /// reads keep ending inside a head (a stream of 1xx responses, say) would otherwise keep all it ever sent.
    /// A head's bytes handed on are slices of the old storage, which they keep on their own.
    static func append(_ bytes: inout ByteBuffer, to pending: inout ByteBuffer?) {
        guard var waiting = pending, waiting.readableBytes > 0 else {
            pending = bytes
            return
        }
        pending = nil
        if waiting.readerIndex > 0 { waiting.discardReadBytes() }
        waiting.writeBuffer(&bytes)
        pending = waiting
    }

    /// The next event from what waits undecoded; what is left stays in `pending` (nil when nothing is), which is
    /// set before the event is acted on, so a call back into the handler sees it. An end can come with no bytes
    /// left (a body that just ended, or none).
    static func next(_ decoder: inout HTTP1MessageDecoder, from pending: inout ByteBuffer?) -> HTTP1MessageDecoder.Event {
        var buffer = pending ?? ByteBuffer()
        pending = nil
        let event = decoder.next(&buffer)
        if buffer.readableBytes > 0 { pending = buffer }
        return event
    }
}

/// The upstream side: requests out over the verified TLS client, responses in, decoded by the proxy's own
/// HTTP/1.1 codec (each response framed by the request it answers).
final class InterceptedUpstreamHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Limits on a response head: SwiftNIO's decoder's defaults, which the proxy used before its own codec.
    static let responseLimits = HTTP1HeadParser.Limits(startLine: 80 * 1024, headerBytes: 80 * 1024, fields: 65_534)

    private let connection: InterceptedConnection
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private var decoder = HTTP1MessageDecoder(kind: .response, limits: InterceptedUpstreamHandler.responseLimits)
    /// Bytes from the upstream not decoded yet.
    private var pending: ByteBuffer?
    private var failed = false
    private var inputEnded = false
    private var writer = RelayedRequestWriter()

    init(connection: InterceptedConnection) {
        self.connection = connection
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        allocator = context.channel.allocator
        connection.attach(upstream: self)
    }

    /// The channel's allocator, read once (`context.channel.allocator` goes through the channel existential).
    private var allocator = ByteBufferAllocator()

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        var bytes = unwrapInboundIn(data)
        Self.append(&bytes, to: &pending)
        // Until a 101 or CONNECT's answer stops HTTP (the relay takes what follows), or the handler leaves.
        while !failed, !decoder.hasStopped, self.context != nil {
            switch Self.next(&decoder, from: &pending) {
            case .part(let part):
                connection.fromUpstream(part)
            case .needMore:
                return
            case .invalid(let error):
                failed = true
                pending = nil
                connection.upstreamFailed(error)
                return
            }
        }
    }

    /// The upstream's input ended: the end of a body that runs until the close, or an error for a response cut short.
    private func endOfInput() {
        guard !inputEnded, !failed, !decoder.hasStopped else { return }
        inputEnded = true
        switch decoder.inputEnded(pending ?? ByteBuffer()) {
        case .part(let part):
            connection.fromUpstream(part)
        case .invalid(let error):
            failed = true
            connection.upstreamFailed(error)
        case .needMore:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        connection.upstreamReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is TLSClosedWithoutNotify { connection.upstreamClosedWithoutNotify() }
        if case ChannelEvent.inputClosed = event { endOfInput() }
        connection.lifecycleEvent(event, clientSide: false, context: context)
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        connection.upstreamFailed(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        endOfInput()
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

    /// No response in progress and nothing received past the last one: the connection may serve another client
    /// connection. Bytes past the last response (a wrong Content-Length, a body on a 204) would be read as the next
    /// client connection's response.
    var isBetweenResponses: Bool {
        !failed && !decoder.hasStopped && decoder.isBetweenMessages && (pending?.readableBytes ?? 0) == 0
    }

    func send(_ part: RelayedRequestPart, flush: Bool = false) {
        guard let context else { return }
        if case .head(let head, _) = part {
            decoder.answeringHEAD = head.methodIs("HEAD")
            decoder.answeringCONNECT = head.methodIs("CONNECT")
        }
        switch writer.serialize(part, allocator: allocator) {
        case .success(let bytes?):
            context.write(wrapOutboundOut(bytes), promise: nil)
            if flush { context.flush() }
        case .success(nil):
            if flush { context.flush() }
        case .failure:
            // Nothing of this request, or after it, goes out.
            context.close(promise: nil)
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
    func replace(with relay: UpgradedRelayHandler) throws -> ByteBuffer? {
        guard let context else { throw ChannelError.ioOnClosedChannel }
        let pipeline = context.pipeline.syncOperations
        try pipeline.addHandler(relay, position: .last)
        let leftover = pending
        pending = nil
        failed = true
        pipeline.removeHandler(context: context, promise: nil)
        return leftover
    }

    func close() {
        context?.close(promise: nil)
    }

    /// Nothing more the upstream sent is decoded or handed on (its response was refused).
    func discardInput() {
        failed = true
        pending = nil
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

import ControlPlane
import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOTLS

/// HTTP/2 on both sides of an inspected connection (the upstream chose h2, the client was answered with it):
/// the client's connection is terminated by a server-role `NIOHTTP2Handler`, the upstream's re-originated by a
/// client-role one, and each stream the client opens gets a stream of its own upstream. Frames are relayed
/// stream by stream (`InterceptedStream`), so flow control holds end to end: a stream is read only while its
/// other half can take more, and a slow reader stalls its own stream only. Connection-level frames are not
/// relayed but answered: GOAWAY is passed on with its error code, server push is refused (SETTINGS_ENABLE_PUSH
/// 0 toward the upstream), and extended CONNECT (RFC 8441) is offered to the client once the upstream offers it.
/// Loop-bound, like its connection.
final class InterceptedHTTP2 {
    private var connection: InterceptedConnection?
    let limits: HTTP2Limits
    private let eventLoop: any EventLoop
    private var upstreamMultiplexer: NIOHTTP2Handler.StreamMultiplexer?
    private var clientParent: InterceptedHTTP2ParentHandler?
    private var upstreamParent: InterceptedHTTP2ParentHandler?
    /// Streams opened by the client and not yet closed on its side.
    private var streams: [ObjectIdentifier: InterceptedStream] = [:]
    private var openStreams: Int { streams.count }
    /// The highest stream the client opened: what a GOAWAY toward it says was processed.
    private var lastClientStream = HTTP2StreamID.rootStream
    /// The code of the GOAWAY sent to the client, once one was.
    private var goAwayToClientCode: HTTP2ErrorCode?
    private var sentGoAwayToUpstream = false
    /// The upstream's GOAWAY: it takes no new streams, and those above its last stream ID were not processed.
    private var upstreamLastStreamID: HTTP2StreamID?
    var upstreamGoneAway: Bool { upstreamLastStreamID != nil }
    /// New client streams are refused (REFUSED_STREAM, safe to retry) once the client was told GOAWAY or the
    /// upstream takes no more.
    var refusesNewStreams: Bool { goAwayToClientCode != nil || upstreamGoneAway }
    private var offeredExtendedConnect = false
    private var closingWhenIdle = false
    /// The highest stream the client opened that got a stream channel (client streams only grow).
    private var highestClientStreamWithChannel: UInt32 = 0
    /// A client stream NIOHTTP2Handler reset before it had a channel, reported once its reason is known
    /// (`resetWritten`).
    private var refusedStream: UInt32?

    init(connection: InterceptedConnection, limits: HTTP2Limits, eventLoop: any EventLoop) {
        self.connection = connection
        self.limits = limits
        self.eventLoop = eventLoop
    }

    /// Adds the HTTP/2 handlers above both sides' TLS (after their handshake handlers).
    func install(client: any Channel, upstream: any Channel) throws {
        guard let connection else { throw ChannelError.ioOnClosedChannel }
        var settings: HTTP2Settings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: limits.maxConcurrentStreams),
            HTTP2Setting(parameter: .maxHeaderListSize, value: limits.maxHeaderListSize),
            HTTP2Setting(parameter: .initialWindowSize, value: limits.streamWindow),
        ]
        var connectionConfiguration = NIOHTTP2Handler.ConnectionConfiguration()
        connectionConfiguration.initialSettings = settings
        // The connection's window is refilled as frames arrive; the streams' windows are what bound memory.
        connectionConfiguration.targetWindowSize = max(65_535, min(limits.bufferBytes / 2, Int(Int32.max)))
        var streamConfiguration = NIOHTTP2Handler.StreamConfiguration()
        streamConfiguration.targetWindowSize = limits.streamWindow

        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        let clientHandler = NIOHTTP2Handler(
            mode: .server, eventLoop: eventLoop, connectionConfiguration: connectionConfiguration,
            streamConfiguration: streamConfiguration
        ) { streamChannel in
            loopBound.value.acceptClientStream(streamChannel)
        }
        let clientParent = InterceptedHTTP2ParentHandler(side: .client, http2: self, connection: connection)
        self.clientParent = clientParent
        let clientGuard = Self.floodGuard(
            prefaceFrom: .inbound, side: "client", connection: connection,
            onFlood: { loopBound.value.flooded(side: "client", $0) }
        ) { reset in
            loopBound.value.resetWritten(reset)
        }
        try InterceptedConnection.addAfterHandshakeHandler(client, [clientGuard, clientHandler, clientParent])

        // Toward the upstream: no server push (a pushed stream has no client request to belong to).
        settings.append(HTTP2Setting(parameter: .enablePush, value: 0))
        connectionConfiguration.initialSettings = settings
        // NIO's limit on resets received (rapid reset) guards a server from its clients. The upstream resets only
        // streams the proxy opened for clients, each once: an origin that answers and then stops an upload with
        // RST_STREAM(NO_ERROR), as servers do, would otherwise end the whole connection after 200 in 30 s. Raised,
        // not lifted: NIO keeps a timestamp per allowed reset, reserved up front (10,000 is 80 KB per connection).
        var upstreamStreamConfiguration = streamConfiguration
        upstreamStreamConfiguration.streamResetFrameRateLimit.maximumCount = Self.upstreamResetLimit
        let upstreamHandler = NIOHTTP2Handler(
            mode: .client, eventLoop: eventLoop, connectionConfiguration: connectionConfiguration,
            streamConfiguration: upstreamStreamConfiguration
        ) { pushed in
            // Push is disabled; a server that pushes anyway has the stream refused.
            pushed.close(promise: nil)
            return pushed.eventLoop.makeSucceededVoidFuture()
        }
        let upstreamParent = InterceptedHTTP2ParentHandler(side: .upstream, http2: self, connection: connection)
        self.upstreamParent = upstreamParent
        try InterceptedConnection.addAfterHandshakeHandler(
            upstream,
            [
                Self.floodGuard(
                    prefaceFrom: .outbound, side: "upstream", connection: connection,
                    onFlood: { loopBound.value.flooded(side: "upstream", $0) }),
                upstreamHandler, upstreamParent,
            ])
        upstreamMultiplexer = try upstreamHandler.syncMultiplexer()
    }

    /// Resets the upstream may send in 30 s before NIO ends its connection (NIO's default, for servers, is 200).
    static let upstreamResetLimit = 10_000

    /// The side's flood guard: a flood is logged, and the connection closes (its streams are reported as cut, with
    /// the flood as their error: `onFlood`, `closedByFlood`). On the client's side it also passes on the resets
    /// written to the client (`resetWritten`).
    private static func floodGuard(
        prefaceFrom: HTTP2FrameCounter.Direction, side: String, connection: InterceptedConnection,
        onFlood: @escaping (String) -> Void,
        onReset: ((HTTP2FrameCounter.Reset) -> Void)? = nil
    ) -> HTTP2FloodGuardHandler {
        let logger = connection.logger
        let target = connection.reportedTarget
        return HTTP2FloodGuardHandler(
            prefaceFrom: prefaceFrom,
            onFlood: { flood in
                logger.warning(
                    "closing an inspected HTTP/2 connection: the \(side) flooded a stream",
                    metadata: ["target": "\(target)", "side": "\(side)", "flood": "\(flood)"])
                onFlood(flood)
            },
            onReset: onReset)
    }

    // MARK: requests refused before they had a stream

    /// A reset written to the client. One with PROTOCOL_ERROR on a stream the client opened that never got a
    /// channel is a request NIOHTTP2Handler refused as malformed when its HEADERS arrived (a field name in
    /// uppercase, a connection-specific field, a pseudo-header missing or repeated): no handler of the proxy saw
    /// it, so it is reported here, like an HTTP/1.1 request refused with 400. Its reason is the error the handler
    /// fires right after writing the reset (`connectionError`); a reset that gets none is reported at the end of
    /// the read, without the codec's reason. That happens when the client's connection cannot take more at that
    /// moment: NIO then holds the reset back and fires the error first, and the request is reported when the reset
    /// goes out.
    func resetWritten(_ reset: HTTP2FrameCounter.Reset) {
        guard reset.code == UInt32(HTTP2ErrorCode.protocolError.networkCode), reset.stream % 2 == 1,
            reset.stream > highestClientStreamWithChannel
        else { return }
        reportRefusedRequest(reason: nil)  // an earlier one whose reason never came
        refusedStream = reset.stream
    }

    /// Reports the refused request awaiting its reason, if any.
    func reportRefusedRequest(reason: String?) {
        guard let stream = refusedStream, let connection else { return }
        refusedStream = nil
        let why = "malformed request: \(reason ?? "refused by the HTTP/2 layer")"
        connection.logger.info(
            "rejected an intercepted request",
            metadata: [
                "target": "\(connection.reportedTarget)", "stream": "\(stream)", "reset": "PROTOCOL_ERROR",
                "reason": "\(why)",
            ])
        connection.report(
            InterceptedExchangeStateMachine.Exchange(method: "", path: ""),
            startedAt: WallClock.rfc3339(unixMillis: WallClock.nowMillis()), policy: (nil, nil), error: "rejected: \(why)")
    }

    // MARK: streams

    private func acceptClientStream(_ channel: any Channel) -> EventLoopFuture<Void> {
        if let id = try? channel.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID) {
            highestClientStreamWithChannel = max(highestClientStreamWithChannel, UInt32(Int32(id)))
        }
        guard let connection else { return channel.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
        guard openStreams < Int(limits.maxConcurrentStreams) else {
            // NIOHTTP2Handler holds the client to SETTINGS_MAX_CONCURRENT_STREAMS only once it has acknowledged
            // them; until then a client may open as many as it likes (RFC 9113 §6.5.2). The ones over the limit are
            // refused (REFUSED_STREAM: not processed, safe to retry), so memory stays within the streams' windows.
            channel.writeAndFlush(HTTP2Frame.FramePayload.rstStream(.refusedStream)).whenComplete { _ in
                channel.close(promise: nil)
            }
            return channel.eventLoop.makeSucceededVoidFuture()
        }
        let stream = InterceptedStream(http2: self, connection: connection)
        do {
            try channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
            try channel.pipeline.syncOperations.addHandler(InterceptedStreamHalf(side: .client, stream: stream))
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        streams[ObjectIdentifier(stream)] = stream
        return channel.eventLoop.makeSucceededVoidFuture()
    }

    /// Opens the upstream half of `stream`; the stream is told when it is ready (or failed).
    func openUpstream(for stream: InterceptedStream) {
        guard let upstreamMultiplexer else {
            stream.upstreamFailed(ChannelError.ioOnClosedChannel)
            return
        }
        let promise = eventLoop.makePromise(of: (any Channel).self)
        let loopBound = NIOLoopBound(stream, eventLoop: eventLoop)
        upstreamMultiplexer.createStreamChannel(promise: promise) { channel in
            do {
                try channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
                try channel.pipeline.syncOperations.addHandler(InterceptedStreamHalf(side: .upstream, stream: loopBound.value))
                return channel.eventLoop.makeSucceededVoidFuture()
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
        }
        promise.futureResult.whenComplete { result in
            switch result {
            case .success: loopBound.value.upstreamReady()
            case .failure(let error): loopBound.value.upstreamFailed(error)
            }
        }
    }

    func clientStreamOpened(_ id: HTTP2StreamID) {
        if id > lastClientStream { lastClientStream = id }
    }

    /// A client stream has closed.
    func streamClosed(_ stream: InterceptedStream) {
        streams[ObjectIdentifier(stream)] = nil
        if closingWhenIdle, openStreams == 0 { closeNow() }
    }

    // MARK: connection-level frames

    func rootFrame(_ frame: HTTP2Frame, from side: InterceptedStreamStateMachine.Side) {
        switch (side, frame.payload) {
        case (.upstream, .goAway(let lastStreamID, let code, _)):
            // The upstream takes no new streams: the client is told the same, with the upstream's code. Its streams
            // the upstream did not process are reset toward the client with REFUSED_STREAM (safe to retry); new ones
            // are refused the same way.
            connection?.logger.debug("upstream sent GOAWAY", metadata: ["code": "\(code)"])
            let last = min(lastStreamID, upstreamLastStreamID ?? lastStreamID)
            upstreamLastStreamID = last
            // Streams the upstream will not process: NIOHTTP2Handler closes those it sent; those whose HEADERS it
            // still holds (the upstream's concurrent-stream limit) are reset here, so they never go out.
            for stream in streams.values { stream.upstreamWentAway(lastStreamID: last) }
            goAwayToClient(code)
        case (.client, .goAway(_, let code, _)):
            guard !sentGoAwayToUpstream else { return }
            sentGoAwayToUpstream = true
            upstreamParent?.write(
                HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .rootStream, errorCode: code, opaqueData: nil)))
        case (.upstream, .settings(.settings(let settings))):
            // Extended CONNECT (WebSocket over HTTP/2) toward the client once the upstream accepts it.
            if !offeredExtendedConnect, settings.contains(where: { $0.parameter == .enableConnectProtocol && $0.value == 1 }) {
                offeredExtendedConnect = true
                clientParent?.write(
                    HTTP2Frame(streamID: .rootStream, payload: .settings(.settings([HTTP2Setting(parameter: .enableConnectProtocol, value: 1)]))))
            }
        default:
            break
        }
    }

    /// Why the connection was closed, once a side flooded a stream: the error of every stream it cut, so the action
    /// says what the log says (the first flood only: both sides close after it).
    private(set) var closedByFlood: String?

    func flooded(side: String, _ flood: String) {
        guard closedByFlood == nil else { return }
        closedByFlood = "connection closed: the \(side) flooded a stream (\(flood))"
    }

    /// Whether an upstream stream was closed unprocessed by the upstream's GOAWAY (its ID above the last one the
    /// upstream processed).
    func upstreamDidNotProcess(_ id: HTTP2StreamID?) -> Bool {
        guard let last = upstreamLastStreamID, let id else { return false }
        return id > last
    }

    /// GOAWAY in two steps (RFC 9113 §6.8): first with the highest stream ID, so a stream the client opens
    /// meanwhile is not left unanswered (it is refused, and may be retried), then, as the connection's last frame,
    /// with the last stream the client opened.
    private func goAwayToClient(_ code: HTTP2ErrorCode) {
        // Once, or again when an error follows a graceful one (RFC 9113 allows more than one GOAWAY).
        if let sent = goAwayToClientCode, sent != .noError || code == .noError { return }
        goAwayToClientCode = code
        clientParent?.write(
            HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .maxID, errorCode: code, opaqueData: nil)))
    }

    /// The connection's last frame toward the client: GOAWAY with the last stream it opened (lowering the first
    /// GOAWAY's ID is allowed), with the code it was told, NO_ERROR otherwise.
    private var lastGoAwayToClient: HTTP2Frame {
        HTTP2Frame(
            streamID: .rootStream,
            payload: .goAway(lastStreamID: lastClientStream, errorCode: goAwayToClientCode ?? .noError, opaqueData: nil))
    }

    private static let goAwayToUpstream = HTTP2Frame(
        streamID: .rootStream, payload: .goAway(lastStreamID: .rootStream, errorCode: .noError, opaqueData: nil))

    private func closeBothAfterWrites() {
        clientParent?.closeAfterWrites(last: lastGoAwayToClient)
        upstreamParent?.closeAfterWrites(last: Self.goAwayToUpstream)
    }

    /// The proxy is draining: the client is told to open no more streams; the connection closes once the open
    /// ones have ended.
    func quiesce() {
        goAwayToClient(.noError)
        closingWhenIdle = true
        if openStreams == 0 { closeNow() }
    }

    private func closeNow() {
        connection?.noteClose(by: .proxy, reason: "shutdown")
        closeBothAfterWrites()
    }

    /// The upstream's connection is gone: the client is told GOAWAY, and its connection closes once the streams
    /// still open (their last bytes waiting for the client's window) have ended.
    func closeClientAfterWrites() {
        goAwayToClient(.noError)
        closingWhenIdle = true
        if openStreams == 0 { clientParent?.closeAfterWrites(last: lastGoAwayToClient) }
    }

    /// Errors NIOHTTP2Handler reports on the connection's pipeline although they end one stream only (that stream
    /// was reset, and its channel told): everything else it reports there ends the connection.
    /// `NoSuchStream` and `BadStreamStateTransition` are connection errors when the peer caused them (NIO has then
    /// sent GOAWAY, and a well-behaved peer closes; the idle timeout bounds one that does not) but harmless when a
    /// write of the proxy's met a stream that had just closed, so they do not close the connection here.
    static let streamLevelErrors: Set<String> = [
        "NoSuchStream", "StreamClosed", "BadStreamStateTransition", "MissingPseudoHeader", "DuplicatePseudoHeader",
        "PseudoHeaderAfterRegularHeader", "UnknownPseudoHeader", "UnsupportedPseudoHeader", "InvalidPseudoHeaders",
        "MissingHostHeader", "DuplicateHostHeader", "EmptyPathHeader", "InvalidStatusValue", "TrailersWithoutEndStream",
        "ForbiddenHeaderField", "InvalidPseudoHeaderValue", "ContentLengthViolated", "ContentLengthHeadersMismatch",
        "ContentLengthHeaderNegative", "ContentLengthHeaderMalformedValue", "NoStreamIDAvailable",
        "InvalidHTTP2HeaderFieldName", "InvalidHTTP2HeaderFieldValue",
    ]

    /// An HTTP/2 or HPACK error on one side's connection. A connection error (protocol violation, a limit broken:
    /// NIOHTTP2Handler has sent GOAWAY with its code) closes both sides; one that ended a stream only is that
    /// stream's business.
    func connectionError(_ error: any Error, side: InterceptedStreamStateMachine.Side) {
        guard let connection else { return }
        let streamLevel = error is NIOHTTP2Errors.StreamError || Self.streamLevelErrors.contains("\(type(of: error))")
        if streamLevel, side == .client, refusedStream != nil {
            // Fired right after the reset of a request that never had a stream channel: that request's reason.
            reportRefusedRequest(reason: Self.describe((error as? NIOHTTP2Errors.StreamError)?.baseError ?? error))
            return
        }
        // A stream error on a write (CreatedStreamAfterGoaway, say) comes wrapped; its stream channel was told.
        // The others ended a stream that has a channel: it reports itself.
        if streamLevel { return }
        connection.logger.info(
            "HTTP/2 connection error",
            metadata: ["target": "\(connection.reportedTarget)", "side": "\(side)", "error": "\(Self.describe(error))"])
        connection.noteClose(by: side == .client ? .client : .upstream, reason: "error: HTTP/2: \(Self.describe(error))")
        // NIOHTTP2Handler's GOAWAY on the failing side is flushed; the other side is told NO_ERROR.
        if side == .client {
            clientParent?.closeAfterWrites(last: nil)
            upstreamParent?.closeAfterWrites(last: Self.goAwayToUpstream)
        } else {
            goAwayToClient(.noError)
            clientParent?.closeAfterWrites(last: lastGoAwayToClient)
            upstreamParent?.closeAfterWrites(last: nil)
        }
    }

    /// An HTTP/2 or HPACK error by its name (`ExcessivelyLargeHeaderBlock`), without the source location its
    /// description carries.
    static func describe(_ error: any Error) -> String {
        if let closed = error as? NIOHTTP2Errors.StreamClosed { return "StreamClosed(\(closed.errorCode))" }
        if error is any NIOHTTP2Error || error is any NIOHPACKError || error is NIOHTTP2Errors.StreamError { return "\(type(of: error))" }
        return "\(error)"
    }

    /// Streams whose report waits for their last writes to the client (`InterceptedStream.finishAfterDeliveries`).
    private var awaitingDeliveries: [ObjectIdentifier: InterceptedStream] = [:]

    func awaitDeliveries(of stream: InterceptedStream) { awaitingDeliveries[ObjectIdentifier(stream)] = stream }
    func deliveriesAwaited(by stream: InterceptedStream) { awaitingDeliveries[ObjectIdentifier(stream)] = nil }

    /// The connection has finished: nothing more is relayed. Streams still waiting for their writes are reported now,
    /// before the connection's close record.
    func detach() {
        for stream in Array(awaitingDeliveries.values) { stream.finishPending() }
        reportRefusedRequest(reason: nil)
        connection = nil
        clientParent = nil
        upstreamParent = nil
        upstreamMultiplexer = nil
    }
}

@available(*, unavailable)
extension InterceptedHTTP2: Sendable {}

/// After the `NIOHTTP2Handler` on each side: sees the connection-level frames (stream 0), the TLS handshake,
/// errors, the channel closing and the proxy's shutdown events (what `InterceptedClientHandler` and
/// `InterceptedUpstreamHandler` see for HTTP/1.1).
final class InterceptedHTTP2ParentHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private let side: InterceptedStreamStateMachine.Side
    private let http2: InterceptedHTTP2
    private let connection: InterceptedConnection
    private var context: ChannelHandlerContext?

    init(side: InterceptedStreamStateMachine.Side, http2: InterceptedHTTP2, connection: InterceptedConnection) {
        self.side = side
        self.http2 = http2
        self.connection = connection
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        http2.rootFrame(unwrapInboundIn(data), from: side)
    }

    func write(_ frame: HTTP2Frame) {
        guard let context else { return }
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    }

    /// Closes once everything written so far has gone out: `last` (a GOAWAY repeating the one sent, which a peer
    /// must accept) is written last and the channel closes when its write completes (writes complete in order),
    /// so a stream's last bytes are not cut off. Without `last`, closes after a flush.
    func closeAfterWrites(last: HTTP2Frame?) {
        guard let context else { return }
        guard context.channel.isActive, let last else {
            context.flush()
            context.close(promise: nil)
            return
        }
        context.writeAndFlush(wrapOutboundOut(last)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is any NIOHTTP2Error || error is any NIOHPACKError || error is NIOHTTP2Errors.StreamError {
            // NIOHTTP2Handler has sent GOAWAY with the matching code.
            http2.connectionError(error, side: side)
        } else if side == .client {
            connection.clientFailed(error)
        } else {
            connection.upstreamFailed(error)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if side == .client, case TLSUserEvent.handshakeCompleted = event {
            connection.clientHandshakeCompleted()
        } else {
            connection.lifecycleEvent(event, clientSide: side == .client, context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Everything this read brought has been through NIOHTTP2Handler: a refused request has its reason by now.
        if side == .client { http2.reportRefusedRequest(reason: nil) }
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if side == .client { connection.clientClosed() } else { connection.upstreamClosed() }
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension InterceptedHTTP2ParentHandler: Sendable {}

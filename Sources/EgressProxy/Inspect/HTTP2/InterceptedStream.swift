import ControlPlane
import Logging
import NIOCore
import NIOHTTP1
import NIOHPACK
import NIOHTTP2

/// One stream of an inspected HTTP/2 connection: the client's stream channel and the upstream stream opened for
/// it. The request's HEADERS are judged by the policy before an upstream stream exists; then frames go across as
/// they are (HEADERS with their pseudo-headers, DATA, trailers, END_STREAM), flow control stays per hop, and a
/// reset on either side resets the other with the same code. Reported once, like an HTTP/1.1 exchange.
final class InterceptedStream {
    private let http2: InterceptedHTTP2
    private let connection: InterceptedConnection
    private var machine: InterceptedStreamStateMachine
    private(set) var client: InterceptedStreamHalf?
    private(set) var upstream: InterceptedStreamHalf?
    /// Frames read from the client before the upstream stream was ready (its HEADERS, perhaps some DATA).
    private var pending: [HTTP2Frame.FramePayload] = []
    /// The client's request was answered by the proxy (refused): nothing goes upstream.
    private var answered = false
    private var startedAt: String?
    private var policy: (policy: String?, wouldBlock: Bool?) = (nil, nil)
    private var clientOpen = true
    private var upstreamOpen = false
    /// The client reset or closed its stream before the upstream stream was ready: nothing goes upstream (the
    /// upstream stream, once made, is closed without a frame sent).
    private var abandoned = false

    init(http2: InterceptedHTTP2, connection: InterceptedConnection) {
        self.http2 = http2
        self.connection = connection
        self.machine = InterceptedStreamStateMachine(reportQuery: connection.reportQuery)
    }

    func attach(_ half: InterceptedStreamHalf, side: InterceptedStreamStateMachine.Side) {
        switch side {
        case .client: client = half
        case .upstream:
            upstream = half
            upstreamOpen = true
        }
    }

    /// Whether `side` may be read: only while what it sends can be passed on (the client's first HEADERS are
    /// read before there is an upstream stream; after them, nothing until it is ready).
    func mayRead(_ side: InterceptedStreamStateMachine.Side) -> Bool {
        switch side {
        case .client:
            if answered { return true }  // read and dropped: the client may still send what it had begun
            if !machine.hasRequest { return true }
            return upstream?.isWritable ?? false
        case .upstream:
            return client?.isWritable ?? false
        }
    }

    // MARK: frames

    func fromClient(_ payload: HTTP2Frame.FramePayload) {
        connection.touch()
        let action: InterceptedStreamStateMachine.Action
        switch payload {
        case .headers(let headers):
            if !machine.hasRequest {
                openRequest(headers)
                return
            }
            action = machine.requestHeaders(method: nil, path: nil, extendedProtocol: nil, endStream: headers.endStream)
        case .data(let data):
            connection.relayed(data.data.readableBytes, fromClient: true)
            action = machine.requestData(data.data.readableBytes, endStream: data.endStream)
        case .rstStream(let code):
            client?.noteResetReceived()
            reset(from: .client, code: code)
            return
        default:
            // WINDOW_UPDATE and PRIORITY are per hop.
            return
        }
        guard !answered else { return }
        forward(payload, action: action, to: .upstream)
    }

    func fromUpstream(_ payload: HTTP2Frame.FramePayload) {
        connection.touch()
        guard !answered else { return }
        let action: InterceptedStreamStateMachine.Action
        switch payload {
        case .headers(let headers):
            let statusField = headers.headers.first(name: ":status")
            if !machine.hasFinalStatus, !Self.isStatus(statusField) {
                // A status the client could not read as the proxy reports it (`abc`, `0200`, `099`): not relayed.
                upstream?.reset(.protocolError)
                answer(
                    .unusableResponse("the upstream's :status \(statusField.map { "\"\($0.prefix(8))\"" } ?? "is missing")"),
                    error: "unusable upstream response: :status \(statusField.map { String($0.prefix(8)) } ?? "missing")")
                return
            }
            action = machine.responseHeaders(status: statusField.flatMap { Int($0) }, endStream: headers.endStream)
        case .data(let data):
            // Counted when written to the client (`delivered`): what a client stops reading is not counted as its.
            action = machine.responseData(endStream: data.endStream)
        case .rstStream(let code):
            upstream?.noteResetReceived()
            reset(from: .upstream, code: code)
            return
        default:
            return
        }
        forward(payload, action: action, to: .client)
    }

    private func forward(
        _ payload: HTTP2Frame.FramePayload, action: InterceptedStreamStateMachine.Action,
        to side: InterceptedStreamStateMachine.Side
    ) {
        switch action {
        case .drop:
            return
        case .forward:
            break
        case .forwardAndReport(let exchange):
            report(exchange, error: nil)
        }
        if side == .upstream, upstream == nil {
            pending.append(payload)
        } else if side == .client {
            client?.send(payload, tracked: true)
        } else {
            upstream?.send(payload)
        }
    }

    /// `count` bytes of the upstream's response body, and its END_STREAM when `endStream`, were written to the
    /// client's connection: counted now, and the exchange reported when that completes it.
    func delivered(_ count: Int, endStream: Bool) {
        if count > 0 { connection.relayed(count, fromClient: false) }
        if let exchange = machine.responseWritten(count, endStream: endStream) { report(exchange, error: nil) }
    }

    /// The request's first HEADERS: judged (its :authority, Host and the SNI) before anything goes upstream.
    private func openRequest(_ headers: HTTP2Frame.FramePayload.Headers) {
        startedAt = WallClock.rfc3339(unixMillis: WallClock.nowMillis())
        let fields = headers.headers
        let method = fields.first(name: ":method")
        let extendedProtocol = fields.first(name: ":protocol")
        // Every host field counts (HTTP/1.1 refuses a second Host; here each is judged).
        let requestHosts = ([fields.first(name: ":authority")] + fields["host"].map { Optional($0) })
            .compactMap(Destination.hostWithoutPort)
        let path = fields.first(name: ":path")
        let action = machine.requestHeaders(
            method: method, path: path, extendedProtocol: extendedProtocol,
            hosts: requestHosts, endStream: headers.endStream)
        if let id = client?.streamID { http2.clientStreamOpened(id) }
        if let problem = Self.problem(path: path, method: method) {
            // Before the policy: an absolute :path names a host of its own, which would be neither judged nor reported.
            answer(.badRequest("malformed request: \(problem)"), error: "rejected: malformed request: \(problem)")
            return
        }
        if let invalid = ([fields.first(name: ":authority")] + fields["host"].map { Optional($0) }).compactMap({ $0 })
            .first(where: { !Destination.isValidHostField($0) })
        {
            // As HTTP/1.1 refuses an invalid Host: a lenient upstream could read a name in it that was never judged.
            let problem = "an invalid :authority or host (\(Reporting.printable(String(invalid.prefix(64)))))"
            answer(.badRequest("malformed request: \(problem)"), error: "rejected: malformed request: \(problem)")
            return
        }
        if let problem = Self.tunnelProblem(method: method, extendedProtocol: extendedProtocol) {
            answer(.badRequest(problem), error: "rejected: \(problem)")
            return
        }
        let verdict = connection.judge(connection.namesToJudge(requestHosts: requestHosts))
        policy = (verdict.policy, verdict.wouldBlock)
        if let refusal = verdict.refusal {
            refuse(byPolicy: refusal)
            return
        }
        if http2.refusesNewStreams {
            // The connection is going away (the upstream sent GOAWAY, or the proxy is draining): refused, so the
            // client may retry it on another connection.
            finish(error: "the connection accepts no new streams (GOAWAY)")
            client?.reset(.refusedStream)
            return
        }
        forward(.headers(headers), action: action, to: .upstream)
        http2.openUpstream(for: self)
    }

    /// Exactly three digits, 100 to 599.
    static func isStatus(_ field: String?) -> Bool {
        guard let field, field.utf8.count == 3, field.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
            let code = Int(field)
        else { return false }
        return (100...599).contains(code)
    }

    /// Why a request's `:path` is not one to forward: RFC 9113 §8.3.1 has it origin-form (`/…`), or `*` for OPTIONS.
    /// An absolute URI there names a host of its own, which an upstream that routes by it would reach unjudged.
    /// Nil for a CONNECT without `:protocol`, which has no `:path` (NIO checks that).
    static func problem(path: String?, method: String?) -> String? {
        guard let path else { return nil }
        if path.hasPrefix("/") || (path == "*" && method == "OPTIONS") { return nil }
        return ":path is not origin-form (a path starting with /)"
    }

    /// Why a CONNECT stream is not forwarded: a plain CONNECT would make the stream a tunnel inside the tunnel, carrying
    /// bytes no one parses or reports (HTTP/1.1 refuses it too); an extended CONNECT (RFC 8441, 9220, 9298, 9484) is
    /// relayed for WebSocket only, whose messages stay with the host the request named: `connect-udp` or `connect-ip`
    /// would carry traffic to any host, named only inside the stream. Nil for any other request.
    static func tunnelProblem(method: String?, extendedProtocol: String?) -> String? {
        guard method == "CONNECT" else { return nil }
        guard let extendedProtocol else { return "a CONNECT inside an inspected connection" }
        if extendedProtocol.lowercased() == "websocket" { return nil }
        return "an extended CONNECT for \(Reporting.printable(String(extendedProtocol.prefix(64)))), which inspection does not relay"
    }

    /// Enforce mode: the request names a destination a policy blocks. It is answered 403 on its stream; the
    /// connection's other streams go on.
    private func refuse(byPolicy name: String) {
        let refusal = ProxyError.blockedByPolicy(name)
        answer(refusal, error: refusal.reason, blocked: true)
    }

    /// Answers the request on its stream with the proxy's own `error` (nothing more goes upstream or comes back on
    /// it), and reports it with `reportedError`.
    private func answer(_ error: ProxyError, error reportedError: String, blocked: Bool = false) {
        answered = true
        connection.logger.info(
            "refused an intercepted request",
            metadata: ["target": "\(connection.reportedTarget)", "status": "\(error.status.code)", "reason": "\(error.reason)"])
        if let exchange = machine.answered(status: Int(error.status.code)) {
            connection.report(exchange, startedAt: startedAt, policy: policy, error: reportedError, blocked: blocked)
        }
        let body = "kaizen-egress: \(error.reason)\n"
        var headers = HPACKHeaders()
        headers.add(name: ":status", value: "\(error.status.code)")
        headers.add(name: "content-type", value: "text/plain; charset=utf-8")
        headers.add(name: "content-length", value: "\(body.utf8.count)")
        client?.send(.headers(.init(headers: headers)))
        var buffer = ByteBuffer()
        buffer.writeString(body)
        client?.send(.data(.init(data: .byteBuffer(buffer), endStream: true)), flush: true)
        // A request body still coming is not wanted (RFC 9113 §8.1): NO_ERROR once the answer is out.
        if !machine.requestEnded { client?.reset(.noError, afterWrites: true) }
    }

    // MARK: the upstream half

    func upstreamReady() {
        guard let upstream else { return }
        if abandoned {
            pending = []
            upstream.close()
            return
        }
        let frames = pending
        pending = []
        for frame in frames { upstream.send(frame) }
        upstream.flush()
        client?.resumeReading()
    }

    func upstreamFailed(_ error: any Error) {
        connection.logger.debug("cannot open an upstream HTTP/2 stream", metadata: ["error": "\(InterceptedHTTP2.describe(error))"])
        // Not processed upstream: the client may retry it.
        finish(error: "upstream stream could not be opened: \(InterceptedHTTP2.describe(error))")
        client?.reset(.refusedStream)
    }

    // MARK: resets and closes

    /// The upstream sent GOAWAY: an upstream stream above `lastStreamID` will not be processed. One whose HEADERS
    /// NIOHTTP2Handler still holds (not yet sent) is reset so they never go out; the client's is refused.
    func upstreamWentAway(lastStreamID: HTTP2StreamID) {
        guard let upstream, upstreamOpen, let id = upstream.streamID, id > lastStreamID else { return }
        upstream.reset(.cancel)
    }

    private func reset(from side: InterceptedStreamStateMachine.Side, code: HTTP2ErrorCode) {
        if side == .upstream, code == .noError, machine.responseEnded {
            // The response is whole; the upstream wants no more of the request. Passed on once the response's last
            // bytes are out (a reset drops what is still buffered for the stream); reported after them. (NIO tells
            // this twice: the RST_STREAM frame, then a StreamClosed error.)
            client?.reset(code, afterWrites: true)
            finishAfterDeliveries(error: "stream reset by the upstream: \(code)")
            return
        }
        if side == .client, upstream == nil, !answered {
            // Its upstream stream is still being made (a tick later): the request is never sent, and reported so.
            abandoned = true
            pending = []
            finish(error: "stream reset by the client before it was sent upstream: \(code)")
            return
        }
        finish(error: "stream reset by the \(side == .client ? "client" : "upstream"): \(code)")
        (side == .client ? upstream : client)?.reset(code)
    }

    /// NIOHTTP2Handler closed `side`'s stream itself, with no RST_STREAM from that side: a protocol error it found in
    /// what that side sent (a body longer or shorter than its content-length), or the connection ending. Reported as
    /// the proxy's doing, not the peer's; the other side is reset with the same code.
    private func closedByProxy(_ side: InterceptedStreamStateMachine.Side, code: HTTP2ErrorCode) {
        let sideName = side == .client ? "client" : "upstream"
        if side == .client, upstream == nil, !answered {
            abandoned = true  // its upstream stream is still being made: nothing is sent on it
            pending = []
            finish(error: "stream closed by the proxy on the client side before it was sent upstream: \(code)")
            return
        }
        finish(error: "stream closed by the proxy on the \(sideName) side: \(code)")
        (side == .client ? upstream : client)?.reset(code)
    }

    func readComplete(_ side: InterceptedStreamStateMachine.Side) {
        (side == .client ? upstream : client)?.flush()
    }

    func writable(_ side: InterceptedStreamStateMachine.Side) {
        // What `side` can take again, its partner may read.
        (side == .client ? upstream : client)?.resumeReading()
    }

    func failed(_ side: InterceptedStreamStateMachine.Side, _ error: any Error) {
        if let closed = error as? NIOHTTP2Errors.StreamClosed {
            if side == .upstream, http2.upstreamDidNotProcess(upstream?.streamID) {
                // Closed by the upstream's GOAWAY before it processed the stream: safe for the client to retry.
                finish(error: "the upstream did not process the stream (GOAWAY)")
                client?.reset(.refusedStream)
                return
            }
            if (side == .client ? client : upstream)?.resetReceived == true {
                reset(from: side, code: closed.errorCode)
            } else {
                closedByProxy(side, code: closed.errorCode)
            }
        } else {
            // A stream error (malformed headers, a wrong content-length, say). When it was in what that side sent,
            // NIOHTTP2Handler has reset its stream already; when it was in what the proxy sent on, it is reset here.
            connection.logger.info(
                "HTTP/2 stream error",
                metadata: ["target": "\(connection.reportedTarget)", "side": "\(side)", "error": "\(InterceptedHTTP2.describe(error))"])
            finish(error: "HTTP/2 stream error on the \(side == .client ? "client" : "upstream") side: \(InterceptedHTTP2.describe(error))")
            (side == .client ? client : upstream)?.reset(.internalError)
            (side == .client ? upstream : client)?.reset(side == .client ? .cancel : .internalError)
        }
    }

    func closed(_ side: InterceptedStreamStateMachine.Side) {
        switch side {
        case .client:
            guard clientOpen else { return }
            clientOpen = false
            defer { client = nil }  // the half and this stream hold each other until then
            // Closed cleanly: both ways ended, so the upstream's END_STREAM came through (or the proxy answered
            // itself); a reset or an error was passed on by `failed`. Unreported only when the connection went,
            // or when the response's last frames are still on their way (the stream closes as they are sent on,
            // before their writes complete): reported once they have.
            let whole = machine.requestEnded && machine.responseEnded
            if !machine.isReported, !whole, upstreamOpen { upstream?.reset(.cancel) }
            if upstream == nil, machine.hasRequest, !answered {
                abandoned = true  // its upstream stream is still being made: nothing is sent on it
                pending = []
            }
            finishAfterDeliveries(error: "stream closed before the exchange completed")
            http2.streamClosed(self)
        case .upstream:
            guard upstreamOpen else { return }
            upstreamOpen = false
            defer { upstream = nil }
            if !machine.isReported, !machine.responseEnded {
                if http2.upstreamDidNotProcess(upstream?.streamID) {
                    finish(error: "the upstream did not process the stream (GOAWAY)")
                    if clientOpen { client?.reset(.refusedStream) }
                } else {
                    finish(error: "upstream stream closed before the exchange completed")
                    if clientOpen { client?.reset(.cancel) }
                }
            } else if clientOpen, !machine.requestEnded || !machine.responseEnded {
                // The response is whole (reported when written), or reported already (a tunnel at its 2xx), but the
                // stream is not over on the client's side: it ends now, after the response's last bytes when the
                // response is whole.
                if machine.responseEnded {
                    client?.reset(.noError, afterWrites: true)
                } else {
                    client?.reset(.cancel)
                }
            }
        }
    }

    /// `finish(error:)` once every response frame sent on to the client has been written or has failed: the
    /// frames written count, and a response whose end was written is reported complete (by `delivered`).
    private func finishAfterDeliveries(error: String) {
        guard let client, !machine.isReported else { return finish(error: error) }
        guard pendingFinish == nil else { return }
        pendingFinish = error
        http2.awaitDeliveries(of: self)
        client.afterTrackedWrites { self.finishPending() }
    }

    /// Why the stream ended, while its report waits for writes to the client (`finishAfterDeliveries`).
    private var pendingFinish: String?

    /// Reports a stream whose report waited for its writes: when they have completed, or when the connection
    /// finishes first (its close record comes after every exchange's report).
    func finishPending() {
        guard let error = pendingFinish else { return }
        pendingFinish = nil
        http2.deliveriesAwaited(by: self)
        finish(error: error)
    }

    /// Set once the response's END_STREAM went to the client's side: the report waits for that write (`delivered`),
    /// at most `InterceptedConnection.reportWaitLimit`, so a client that stops reading the stream (its window never
    /// opened again) does not hold the action back, in memory only, for as long as the connection lives.
    private var endWait: Scheduled<Void>?

    func responseEndHanded() {
        guard endWait == nil, !machine.isReported else { return }
        let loopBound = NIOLoopBound(self, eventLoop: connection.eventLoop)
        endWait = connection.eventLoop.scheduleTask(in: InterceptedConnection.reportWaitLimit) {
            loopBound.value.endOverdue()
        }
    }

    private func endOverdue() {
        endWait = nil
        finish(error: InterceptedConnection.notTakenInTime)
    }

    /// Reports the exchange once, with `error` when it did not complete.
    private func finish(error: String) {
        endWait?.cancel()
        endWait = nil
        // The machine reports once: nil when it was reported already. A stream cut by a flood's close says so, not
        // only how it ended.
        if let (exchange, why) = machine.ended(http2.closedByFlood ?? error) {
            connection.report(exchange, startedAt: startedAt, policy: policy, error: why)
        }
    }

    private func report(_ exchange: InterceptedStreamStateMachine.Exchange, error: String?) {
        endWait?.cancel()
        endWait = nil
        connection.report(exchange, startedAt: startedAt, policy: policy, error: error)
    }
}

@available(*, unavailable)
extension InterceptedStream: Sendable {}

/// One half of an `InterceptedStream`, in a stream channel: frames in to the stream, frames out from the other
/// half. Reads only while the stream says so (its partner can take more).
final class InterceptedStreamHalf: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let side: InterceptedStreamStateMachine.Side
    private let stream: InterceptedStream
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private var resetSent = false

    init(side: InterceptedStreamStateMachine.Side, stream: InterceptedStream) {
        self.side = side
        self.stream = stream
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }
    var streamID: HTTP2StreamID? { try? context?.channel.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID) }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        stream.attach(self, side: side)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let payload = unwrapInboundIn(data)
        switch side {
        case .client: stream.fromClient(payload)
        case .upstream: stream.fromUpstream(payload)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        stream.readComplete(side)
    }

    func read(context: ChannelHandlerContext) {
        if stream.mayRead(side) {
            context.read()
        } else {
            pendingRead = true
        }
    }

    func resumeReading() {
        guard pendingRead, let context, stream.mayRead(side) else { return }
        pendingRead = false
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { stream.writable(side) }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        stream.failed(side, error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        stream.closed(side)
        context.fireChannelInactive()
    }

    /// The last frame written that ends this side's direction (END_STREAM), for a reset that must follow it.
    private var lastWrite: EventLoopFuture<Void>?
    /// The last tracked write (`send(_:tracked:)`): writes complete in order, so when it has, all before it have.
    private var lastTrackedWrite: EventLoopFuture<Void>?

    /// Writes `payload`; when `tracked` (a response frame relayed to the client), the stream hears of its DATA bytes
    /// and its END_STREAM once the write has completed (`InterceptedStream.delivered`).
    func send(_ payload: HTTP2Frame.FramePayload, flush: Bool = false, tracked: Bool = false) {
        guard let context, !resetSent else { return }
        let ends = Self.endsStream(payload)
        var count = 0
        if tracked, case .data(let data) = payload { count = data.data.readableBytes }
        if ends || count > 0 {
            let written = context.write(wrapOutboundOut(payload))
            if ends { lastWrite = written }
            if tracked {
                lastTrackedWrite = written
                let stream = self.stream
                written.assumeIsolated().whenSuccess { stream.delivered(count, endStream: ends) }
                if ends { stream.responseEndHanded() }
            }
        } else {
            context.write(wrapOutboundOut(payload), promise: nil)
        }
        if flush { context.flush() }
    }

    /// Runs `body` once every tracked write so far has completed (written or failed); at once when none is pending.
    func afterTrackedWrites(_ body: @escaping () -> Void) {
        guard let lastTrackedWrite else { return body() }
        lastTrackedWrite.assumeIsolated().whenComplete { _ in body() }  // at once when it already has
    }

    private static func endsStream(_ payload: HTTP2Frame.FramePayload) -> Bool {
        switch payload {
        case .headers(let headers): return headers.endStream
        case .data(let data): return data.endStream
        default: return false
        }
    }

    /// The peer reset this stream: nothing more is sent on it (not even a reset back).
    func noteResetReceived() {
        resetSent = true
        resetReceived = true
    }

    /// The peer reset this stream (an RST_STREAM came), as opposed to the proxy's HTTP/2 layer closing it.
    private(set) var resetReceived = false

    func flush() { context?.flush() }

    /// Closes the stream channel: one that sent nothing leaves nothing on the wire.
    func close() { context?.close(promise: nil) }

    /// RST_STREAM with `code` (the code the other side reset with), once; with `afterWrites`, once the frame that
    /// ended this side's direction has gone out (a reset drops what is still buffered for the stream).
    func reset(_ code: HTTP2ErrorCode, afterWrites: Bool = false) {
        guard let context, !resetSent, context.channel.isActive else { return }
        resetSent = true
        if afterWrites, let lastWrite {
            context.flush()
            // Only when it went out: a failed write means the stream was reset or closed meanwhile.
            lastWrite.assumeIsolated().whenSuccess { _ in
                guard context.channel.isActive else { return }
                context.writeAndFlush(self.wrapOutboundOut(.rstStream(code)), promise: nil)
            }
        } else {
            context.writeAndFlush(wrapOutboundOut(.rstStream(code)), promise: nil)
        }
    }
}

@available(*, unavailable)
extension InterceptedStreamHalf: Sendable {}

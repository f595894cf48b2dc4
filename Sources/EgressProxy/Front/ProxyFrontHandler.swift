import AccessControl
import ControlPlane
import Glibc
import Interception
import Logging
import NIOCore
import NIOHTTP1
import Telemetry

/// The handler at the end of every client connection's HTTP pipeline. It reads request heads, dials
/// upstreams, and either turns the connection into a CONNECT tunnel or forwards plain-HTTP exchanges; the
/// decisions come from `StateMachine`, this class only performs them.
final class ProxyFrontHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private var machine = StateMachine()
    private let settings: ConnectionSettings
    private var reporting: Reporting
    private let connector: UpstreamConnector
    private var logger: Logger
    private var context: ChannelHandlerContext?
    private var clientAddress = "unknown"

    /// The plain-HTTP upstream in use, or idle and kept for the next request to the same destination.
    private var upstream: UpstreamLink?
    /// The exchange being forwarded: what its close record needs.
    private var exchange: ExchangeRecord?
    /// A read the pipeline asked for while the upstream could not take more.
    private var pendingRead = false
    /// The client's input ended while the tunnel was being dialled.
    private var clientEndedBeforeTunnel = false
    /// For the idle timeout of plain-HTTP connections (a tunnel has its own, in `TunnelSession`).
    private var lastActivity = NIODeadline.now()
    private var idleTimer: Scheduled<Void>?

    private struct UpstreamLink {
        var destination: Destination
        var channel: any Channel
        var handler: UpstreamHTTPHandler
        var resolvedIP: String
    }

    /// A dialled upstream waiting for the state machine's go-ahead to become a tunnel.
    /// A dialled upstream (or a kept one of inspection's) waiting for the state machine's go-ahead to become a tunnel.
    private typealias PendingTunnel = InspectionStartHandler.Tunnel

    private var pendingTunnel: PendingTunnel?
    /// Told when an exchange ends, so it limits the next request head.
    private var headLimiter: RequestHeadLimitHandler?
    /// Told which method the next response answers (a response to HEAD or CONNECT has no body).
    private var encoder: RelayedResponseEncoder?
    /// The proxy answered with an error and is closing the connection.
    private var answeredWithError = false
    /// How deep `perform` is; request parts that arrive meanwhile wait in `deferredParts`.
    private var performing = 0
    private var deferredParts: [HTTPServerRequestPart] = []
    /// The write of the last response's end: a close after it waits for it (a close with writes still queued
    /// drops them, and a body with no length ends with that close, so the client could not tell).
    private var lastResponseEnd: EventLoopFuture<Void>?
    /// The client's connection closes once the last response has gone out: nothing more is read or answered.
    private var closingAfterLastResponse = false
    /// A half-close that arrived inside `perform`, behind `deferredParts`: NIO's pipelining handler passes it on
    /// right after the request it held, while the response before that request is still being written.
    private var deferredHalfClose = false
    /// An error that arrived inside `perform`, behind `deferredParts` (the pipelining handler passes on the decoder's
    /// complaint about a request pipelined after the one being answered once that answer's end is written): handled
    /// after the exchange it follows has been recorded, so it cannot be taken for that exchange's outcome.
    private var deferredError: (any Error)?
    private var drainingDeferred = false

    private struct ExchangeRecord {
        var eventID: EventID
        var destination: Destination
        /// The action's metadata (policy, client), for the canonical line at its close.
        var metadata: ConnectMetadata
        var started: NIODeadline
        var requestBytes: UInt64 = 0
        var responseBytes: UInt64 = 0
        var status: Int?
    }

    init(settings: ConnectionSettings, reporting: Reporting) {
        self.settings = settings
        self.reporting = reporting
        self.connector = UpstreamConnector(settings: settings)
        self.logger = reporting.logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        headLimiter = try? context.pipeline.syncOperations.handler(type: RequestHeadLimitHandler.self)
        encoder = try? context.pipeline.syncOperations.handler(type: RelayedResponseEncoder.self)
        clientAddress = Reporting.describe(context.channel.remoteAddress)
        scheduleIdleCheck(in: settings.idleTimeout, on: context.eventLoop)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        idleTimer = nil
        self.context = nil
    }

    private func scheduleIdleCheck(in delay: TimeAmount, on eventLoop: any EventLoop) {
        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        idleTimer = eventLoop.scheduleTask(in: delay) {
            loopBound.value.idleCheck()
        }
    }

    /// A keep-alive connection (or an exchange) with no bytes either way for the idle timeout is closed.
    private func idleCheck() {
        guard let context else { return }
        let idle = NIODeadline.now() - lastActivity
        guard idle >= settings.idleTimeout else {
            scheduleIdleCheck(in: settings.idleTimeout - idle, on: context.eventLoop)
            return
        }
        if let record = exchange {
            exchange = nil
            recordClose(record, closedBy: .proxy, reason: "idle_timeout")
        }
        closeUpstream()
        closeClientCuttingAnyResponse(context)
    }

    /// Closes the client's connection. With a response part-way through, by a reset: a FIN would end a body
    /// with no length (or one unchunked for an HTTP/1.0 client) as if it were whole.
    private func closeClientCuttingAnyResponse(_ context: ChannelHandlerContext) {
        // Also when part of a response is still queued in the channel: the close drops it.
        let queued = (try? context.channel.syncOptions?.getOption(ChannelOptions.bufferedWritableBytes)) ?? 0
        if machine.responseInProgress || queued > 0 { Self.resetOnClose(context.channel) }
        context.close(promise: nil)
    }

    /// SO_LINGER 0: the next close sends a reset instead of a FIN. Set at once: this runs on the channel's loop.
    private static func resetOnClose(_ channel: any Channel) {
        _ = (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
    }

    // MARK: client events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastActivity = .now()
        let part = unwrapInboundIn(data)
        // Writing a response's end lets the pipelining handler deliver the next request at once, from inside
        // `perform`: it waits until the actions of the exchange that just ended (its close record) are done.
        guard performing == 0, !drainingDeferred else {
            deferredParts.append(part)
            return
        }
        handle(part, context: context)
    }

    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        // The connection closes once the last response has gone out: a request pipelined behind it is not
        // answered (an answer could only be read as part of a body that ends with the close).
        guard !closingAfterLastResponse else { return }
        switch part {
        case .head(let head):
            if let credentials = settings.currentCredentials {
                // Every request proves its agent, against the credentials in force now (a token a reload revoked
                // stops working on open keep-alive connections too); the connection's actions are reported under it.
                guard let agent = authenticate(head, credentials, context: context) else { return }
                reporting.agent = agent
            }
            // The response written next answers this request (pipelined ones wait): a response to HEAD or
            // CONNECT has no body, whatever its head says.
            encoder?.requestMethod = head.method.rawValue
            perform(machine.requestHead(head), context: context)
        case .body(let bytes):
            exchange?.requestBytes &+= UInt64(bytes.readableBytes)
            perform(machine.requestBody(bytes), context: context)
        case .end(let trailers):
            perform(machine.requestEnd(trailers), context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        upstream?.channel.flush()
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            if performing > 0 || drainingDeferred {
                deferredHalfClose = true
            } else {
                clientHalfClosed(context: context)
            }
        } else if event is ProxyShutdownEvent {
            // The drain period is over: an exchange still going is cut by the proxy, not by its client.
            if let record = exchange {
                exchange = nil
                recordClose(record, closedBy: .proxy, reason: "shutdown")
            }
            closeUpstream()
            closeClientCuttingAnyResponse(context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let record = exchange {
            exchange = nil
            let reason =
                machine.responseEndedBeforeRequest
                ? InterceptedConnection.requestCutAfterResponse : "client closed before the exchange completed"
            recordClose(record, closedBy: .client, reason: reason)
        }
        closeUpstream()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if performing > 0 || drainingDeferred {
            if deferredError == nil { deferredError = error }
            return
        }
        handleError(error, context: context)
    }

    private func handleError(_ error: any Error, context: ChannelHandlerContext) {
        // After an error answer the connection is closing: the decoder's complaint about the unfinished head
        // it still holds says nothing new (and would double every log line under a slowloris flood).
        guard !answeredWithError, !closingAfterLastResponse else { return }
        if let limit = error as? RequestLimitError {
            switch machine.state {
            case .idle:
                respond(limit.proxyError, context: context)
            default:
                logger.info("closing client connection", metadata: ["client.address": "\(clientAddress)", "reason": "\(limit.proxyError.reason)"])
                closeUpstream()
                closeClientCuttingAnyResponse(context)
            }
            return
        }
        if let parserError = error as? HTTPParserError, parserError == .headerOverflow, case .idle = machine.state {
            logger.info("request head too large", metadata: ["client.address": "\(clientAddress)"])
            respond(RequestLimitError.headerBlockTooLarge(limit: settings.requestHeadLimits.headerBytes).proxyError, context: context)
            return
        }
        if let parserError = error as? HTTPParserError, parserError == .invalidEOFState, machine.forwardingOrAwaiting {
            // The client's stream ended inside a request the upstream already has the head of (often after an early
            // answer, a 413 with Connection: close, when it stops sending the body): a client that stopped, not a
            // malformed request. The exchange is reported as cut.
            logger.debug("client closed inside its request", metadata: ["client.address": "\(clientAddress)"])
            closeUpstream()
            closeClientCuttingAnyResponse(context)
            return
        }
        if let parserError = error as? HTTPParserError, parserError == .invalidEOFState, !context.channel.isActive {
            // The connection closed (the drain closing it between requests, or the client going) inside a request
            // head: nothing was malformed, and there is no one left to answer.
            logger.debug("connection closed inside a request head", metadata: ["client.address": "\(clientAddress)"])
            closeUpstream()
            return
        }
        if let parserError = error as? HTTPParserError {
            logger.info("malformed request", metadata: ["client.address": "\(clientAddress)", "error": "\(parserError)"])
            switch machine.state {
            case .idle:
                respond(ProxyError.badRequest("malformed HTTP request"), context: context)
            default:
                closeUpstream()
                closeClientCuttingAnyResponse(context)
            }
            return
        }
        logger.debug("client connection error", metadata: ["client.address": "\(clientAddress)", "error": "\(GlueHandler.describe(error))"])
        closeUpstream()
        closeClientCuttingAnyResponse(context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            upstream?.handler.clientBecameWritable()
        }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        // While an upstream is being dialled, or cannot take more, stop reading the client.
        switch machine.state {
        case .awaitingUpstream, .dialingTunnel:
            pendingRead = true
        case .forwarding where !(upstream?.channel.isWritable ?? true):
            pendingRead = true
        default:
            context.read()
        }
    }

    /// The client sends nothing more: the exchange in flight is its last. With none, the connection closes once
    /// the last response has gone out (closing with it still queued would drop it).
    private func clientHalfClosed(context: ChannelHandlerContext) {
        if case .dialingTunnel = machine.state {
            // A client that sent its CONNECT (and perhaps its first bytes) and then its FIN without waiting for the
            // 200: the tunnel, once set up, is told of the end after those bytes (it would never hear of it).
            clientEndedBeforeTunnel = true
            return
        }
        machine.clientWantsClose()
        guard case .idle = machine.state else { return }
        if let lastResponseEnd {
            lastResponseEnd.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        } else {
            context.close(promise: nil)
        }
    }

    // MARK: upstream events (called by UpstreamHTTPHandler on the same event loop)

    func upstreamResponse(_ part: HTTPClientResponsePart) {
        guard let context else { return }
        lastActivity = .now()
        switch part {
        case .head(let head):
            if !(head.status.code >= 100 && head.status.code < 200 && head.status.code != 101) {
                exchange?.status = Int(head.status.code)
            }
            perform(machine.responseHead(head), context: context)
        case .body(let bytes):
            exchange?.responseBytes &+= UInt64(bytes.readableBytes)
            perform(machine.responseBody(bytes), context: context)
        case .end(let trailers):
            perform(machine.responseEnd(trailers), context: context)
        }
    }

    func upstreamReadComplete() {
        context?.flush()
    }

    func upstreamWritable() {
        guard pendingRead, let context else { return }
        pendingRead = false
        context.read()
    }

    var clientIsWritable: Bool {
        context?.channel.isWritable ?? false
    }

    func upstreamClosed(_ handler: UpstreamHTTPHandler, reason: String, invalidResponse: Bool = false) {
        guard let link = upstream, link.handler === handler else { return }
        upstream = nil
        guard let context else { return }
        perform(machine.upstreamClosed(reason: reason, invalidResponse: invalidResponse), context: context)
    }

    // MARK: actions

    private func perform(_ actions: [StateMachine.Action], context: ChannelHandlerContext) {
        performing += 1
        defer {
            performing -= 1
            // Only the outermost call passes on what waited, in order: the parts, then a half-close behind them.
            if performing == 0, !drainingDeferred {
                drainingDeferred = true
                while !deferredParts.isEmpty { handle(deferredParts.removeFirst(), context: context) }
                if let error = deferredError {
                    deferredError = nil
                    handleError(error, context: context)
                }
                if deferredHalfClose {
                    deferredHalfClose = false
                    clientHalfClosed(context: context)
                }
                drainingDeferred = false
            }
        }
        for action in actions {
            switch action {
            case .dialTunnel(let destination):
                dialTunnel(destination, context: context)
            case .establishTunnel:
                guard let tunnel = pendingTunnel else { continue }
                pendingTunnel = nil
                establishTunnel(tunnel, context: context)
            case .connectUpstream(let destination):
                connectUpstream(destination, context: context)
            case .retryUpstream(let destination):
                // The same exchange, on a new connection: reported again, as every connection is. The first
                // connection's action is closed now, with why; the new one's action gets its own close.
                var metadata = exchange?.metadata ?? newMetadata(destination, transport: .http)
                if let first = exchange {
                    recordClose(
                        first, closedBy: .upstream,
                        reason: "error: the kept connection closed before answering; the request went again on a new one")
                }
                metadata.eventID = EventID.generate()
                metadata.resolvedIP = nil
                exchange = ExchangeRecord(eventID: metadata.eventID, destination: destination, metadata: metadata, started: .now())
                reporting.logger.info(
                    "sending a request again on a new connection: the kept one closed before answering",
                    metadata: ["target": "\(destination)"])
                dialUpstream(destination, metadata: metadata, context: context)
            case .writeUpstream(let parts):
                guard let link = upstream else { continue }
                for part in parts {
                    link.channel.write(part, promise: nil)
                }
                link.channel.flush()
            case .writeClient(let part):
                if case .end = part {
                    if machine.clientClosesAfterResponse { closingAfterLastResponse = true }
                    lastResponseEnd = context.write(wrapOutboundOut(part))
                } else {
                    context.write(wrapOutboundOut(part), promise: nil)
                }
            case .respondError(let error):
                respond(error, context: context)
            case .completeExchange(let keepClient, let keepUpstream):
                // Taken before the flush: a draining connection closes as soon as its last response is out (NIO's
                // pipeline handler closes it from inside the flush), and the close must not find it unfinished.
                let record = exchange
                exchange = nil
                context.flush()
                if let record {
                    recordClose(record, closedBy: keepClient ? .proxy : .client, reason: "complete")
                }
                if !keepUpstream {
                    closeUpstream()
                } else {
                    upstream?.handler.exchangeFinished()
                }
                if !keepClient {
                    if let lastResponseEnd {
                        // Meanwhile nothing more is read or answered on this connection (see `handle`).
                        lastResponseEnd.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
                    } else {
                        context.close(promise: nil)
                    }
                } else {
                    headLimiter?.expectNextHead()
                }
            case .closeClient(let reason), .abortClient(let reason):
                logger.info("closing client connection", metadata: ["client.address": "\(clientAddress)", "reason": "\(reason)"])
                if let record = exchange {
                    exchange = nil
                    recordClose(record, closedBy: .upstream, reason: reason)
                }
                closeUpstream()
                if case .abortClient = action { Self.resetOnClose(context.channel) }
                context.close(promise: nil)
            }
        }
    }

    /// The agent the request's `Proxy-Authorization` proves; nil when it proves none, and then the request is
    /// answered (407, or 400 for two headers), counted by reason, and logged: a wrong token or an unknown agent as a
    /// warning, since it is someone trying tokens or a revoked one in use. Neither the value nor an unknown agent's
    /// name is logged (a token can be sent as the user name).
    private func authenticate(
        _ head: HTTPRequestHead, _ credentials: ProxyCredentials, context: ChannelHandlerContext
    ) -> String? {
        let values = head.headers["proxy-authorization"]
        let failure: String
        var metricReason: String?
        var error = ProxyError.credentialsRequired
        if values.count > 1 {
            failure = "duplicate"
            error = .badRequest("two Proxy-Authorization headers: send one")
        } else if let value = values.first {
            let check = credentials.check(authorization: value)
            if case .agent(let agent) = check { return agent }
            failure = check.failure ?? "malformed"
            // The metric has one label for a wrong token and an unknown agent: it must not tell which agents exist.
            metricReason = check == .malformed ? "malformed" : "invalid"
            var metadata: Logger.Metadata = [
                "client.address": "\(clientAddress)", "reason": "\(failure)", "status": "\(error.status.code)",
            ]
            if case .wrongToken(let agent) = check { metadata["agent"] = "\(Reporting.printable(agent))" }
            logger.warning("proxy authentication failed", metadata: metadata)
            error.logged = true
        } else {
            failure = "missing"
        }
        reporting.metrics?.proxyAuthFailed(reason: metricReason ?? failure)
        respond(error, context: context)
        return nil
    }

    private func respond(_ error: ProxyError, context: ChannelHandlerContext) {
        answeredWithError = true
        if !error.logged {
            logger.info(
                "answered with an error",
                metadata: [
                    "client.address": "\(clientAddress)", "status": "\(error.status.code)", "reason": "\(error.reason)",
                ]
            )
        }
        if var record = exchange {
            exchange = nil
            // What the client got: the proxy's answer, not a status the upstream sent that it would not relay.
            record.status = Int(error.status.code)
            recordClose(record, closedBy: .proxy, reason: "error: \(error.reason)")
        }
        closeUpstream()
        // The response is serialized here and written below the HTTP encoder, which would drop the body of
        // any response to CONNECT; the body tells the user why. The connection closes after it.
        Self.removeHTTPServerHandlers(from: context.pipeline.syncOperations)
        let body = (error.clientReason ?? error.reason) + "\n"
        var response = context.channel.allocator.buffer(capacity: 256 + body.utf8.count)
        response.writeString("HTTP/1.1 \(error.status.code) \(error.status.reasonPhrase)\r\n")
        response.writeString("Content-Type: text/plain; charset=utf-8\r\n")
        response.writeString("Content-Length: \(body.utf8.count)\r\n")
        response.writeString("Connection: close\r\n")
        if error.asksForCredentials {
            response.writeString("Proxy-Authenticate: Basic realm=\"kaizen-egress\", charset=\"UTF-8\"\r\n")
        }
        response.writeString("Proxy-Status: kaizen-egress; error=\(error.proxyStatusError)\r\n\r\n")
        response.writeString(body)
        let channel = context.channel
        channel.writeAndFlush(response).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    private func newMetadata(_ destination: Destination, transport: ConnectMetadata.Transport) -> ConnectMetadata {
        let now = WallClock.nowMillis()
        return ConnectMetadata(
            eventID: EventID.generate(unixMillis: now),
            transport: transport,
            host: destination.host,
            port: destination.port,
            client: clientAddress,
            startedAt: WallClock.rfc3339(unixMillis: now),
            outcome: .connected
        )
    }

    /// The client is answered with `failure`'s status.
    private func reportFailure(_ metadata: ConnectMetadata, _ destination: Destination, _ failure: ProxyError) {
        reporting.connectionFailed(metadata, target: destination.description, failure, answeredWithStatus: true)
    }

    // MARK: CONNECT

    private func dialTunnel(_ destination: Destination, context: ChannelHandlerContext) {
        // Until the decoder is gone, the client's end of input waits in front of it: the decoder drops the bytes it
        // holds after the CONNECT head once it sees the end (NIO hands leftovers on only without one).
        try? context.pipeline.syncOperations.addHandler(EndOfInputHold(), position: .first)
        var baseMetadata = newMetadata(destination, transport: .connect)
        if let check = settings.destinationCheck, !check.connectPortAllowed(destination.port) {
            let failure = ProxyError.portNotAllowed(destination.port)
            reportFailure(baseMetadata, destination, failure)
            perform(machine.connectFailed(failure), context: context)
            return
        }
        // A name the policy blocks is refused before it is even resolved; an address rule is checked once
        // the connection tells which address it reached (before a byte is sent).
        if let policy = reporting.judge(&baseMetadata, host: destination.host, address: nil, complete: false) {
            let failure = ProxyError.blockedByPolicy(policy)
            reportFailure(baseMetadata, destination, failure)
            perform(machine.connectFailed(failure), context: context)
            return
        }
        let started = NIODeadline.now()
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        // A tunnel that will be inspected needs no dial when an idle verified connection of this agent's to the
        // destination is kept (the address it reached is the one judged and reported); whether it serves the
        // connection is known once the ClientHello is in (`InspectionStartHandler`).
        let upstream: EventLoopFuture<(any Channel, UpstreamPool.Reservation?)>
        // Read now, not when the client's connection was accepted: a reload since then applies to this CONNECT.
        let inspection = settings.currentInspection.flatMap { $0.policy.mayInspect(connectHost: destination.host) ? $0 : nil }
        if let inspection, inspection.upstreamPool.isEnabled,
            let reservation = inspection.upstreamPool.reserve(
                agent: reporting.agent, host: destination.host.lowercased(), port: destination.port, on: context.eventLoop)
        {
            // On the next turn of the loop, as a dial would complete.
            upstream = context.eventLoop.submit { (reservation.idle.channel, reservation) }
        } else {
            // Glue is added once the 200 is written; a tunnel that may be inspected is not read until later still.
            upstream = connector.connectTunnel(
                to: destination, on: context.eventLoop, holdingReads: inspection != nil
            ).map { ($0, nil) }
            inspection?.mintAhead(forConnectTo: destination, agent: reporting.agent, on: context.eventLoop)
        }
        let judged = baseMetadata
        upstream.whenComplete { result in
            let (handler, context) = loopBound.value
            var metadata = judged
            switch result {
            case .success(let (channel, reservation)):
                let tunnel = PendingTunnel(
                    upstream: channel, destination: destination, metadata: metadata, started: started,
                    reservation: reservation, inspection: inspection)
                guard context.channel.isActive else {
                    tunnel.discard()
                    return
                }
                metadata.resolvedIP = channel.remoteAddress?.ipAddress
                if let policy = handler.reporting.judge(&metadata, host: destination.host, address: metadata.resolvedIP) {
                    tunnel.discard()
                    let failure = ProxyError.blockedByPolicy(policy)
                    handler.reportFailure(metadata, destination, failure)
                    handler.perform(handler.machine.connectFailed(failure), context: context)
                    return
                }
                handler.pendingTunnel = tunnel
                handler.pendingTunnel?.metadata = metadata
                handler.perform(handler.machine.tunnelConnected(), context: context)
                if let unused = handler.pendingTunnel {  // the machine did not want it (already closing)
                    handler.pendingTunnel = nil
                    unused.discard()
                }
            case .failure(let error):
                let failure = ProxyError.dial(handler.connector.classify(error))
                handler.reportFailure(metadata, destination, failure)
                handler.perform(handler.machine.connectFailed(failure), context: context)
            }
        }
    }

    private func establishTunnel(_ tunnel: PendingTunnel, context: ChannelHandlerContext) {
        if let inspection = tunnel.inspection {
            startInspection(tunnel, inspection: inspection, context: context)
            return
        }
        // Reserved only for a tunnel that is inspected (the same settings decide both).
        precondition(tunnel.reservation == nil, "a kept inspection connection reached a plain tunnel")
        let (upstream, destination, metadata, started) = (tunnel.upstream, tunnel.destination, tunnel.metadata, tunnel.started)
        let (session, clientGlue, upstreamGlue) = GlueHandler.tunnel(
            reporting: reporting, metadata: metadata, destination: destination, started: started,
            settings: settings, eventLoop: context.eventLoop)
        let head = HTTPResponseHead(
            version: .http1_1,
            status: .custom(code: 200, reasonPhrase: "Connection established")
        )
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)

        do {
            let pipeline = context.pipeline.syncOperations
            try upstream.pipeline.syncOperations.addHandler(upstreamGlue)
            try pipeline.addHandler(clientGlue, position: .last)
            // Remove the HTTP handlers; the request decoder goes last so the bytes it still holds (a client
            // that did not wait for the 200) flow into the peek and on to the upstream.
            Self.removeHTTPServerHandlers(from: pipeline)
            pipeline.removeHandler(context: context, promise: nil)
            // The relay flushes on read-complete: one after the leftovers, so early bytes go out at once.
            removeRequestDecoder(from: pipeline, context: context, thenReadComplete: true)
            session.start()
            logger.debug("tunnel established", metadata: ["target": "\(destination)"])
            if pendingRead {
                pendingRead = false
                context.channel.read()
            }
        } catch {
            logger.error("cannot set up tunnel", metadata: ["error": "\(error)"])
            upstream.close(promise: nil)
            context.close(promise: nil)
        }
    }

    /// Answers 200 and hands the connection to the inspection start handler, which waits for the ClientHello.
    private func startInspection(_ tunnel: InspectionStartHandler.Tunnel, inspection: Inspection, context: ChannelHandlerContext) {
        let head = HTTPResponseHead(version: .http1_1, status: .custom(code: 200, reasonPhrase: "Connection established"))
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        do {
            let pipeline = context.pipeline.syncOperations
            try pipeline.addHandler(
                InspectionStartHandler(tunnel: tunnel, inspection: inspection, settings: settings, reporting: reporting),
                position: .last
            )
            Self.removeHTTPServerHandlers(from: pipeline)
            pipeline.removeHandler(context: context, promise: nil)
            removeRequestDecoder(from: pipeline, context: context, thenReadComplete: false)
            logger.debug("tunnel waiting for its ClientHello (inspection)", metadata: ["target": "\(tunnel.destination)"])
            if pendingRead {
                pendingRead = false
                context.channel.read()
            }
        } catch {
            logger.error("cannot set up tunnel", metadata: ["error": "\(error)"])
            tunnel.discard()
            context.close(promise: nil)
        }
    }

    /// Removes the request decoder last, once a tunnel's handlers are in place: the bytes it still holds (a client
    /// that did not wait for the 200) flow on as a read, with a read-complete after them when asked; then, for a
    /// client whose input ended while the tunnel was dialled, the end of input (the tunnel would never hear of it).
    private func removeRequestDecoder(
        from pipeline: ChannelPipeline.SynchronousOperations, context: ChannelHandlerContext, thenReadComplete: Bool
    ) {
        let hold = try? pipeline.handler(type: EndOfInputHold.self)
        if let hold { pipeline.removeHandler(hold, promise: nil) }
        let endedEarly = clientEndedBeforeTunnel || hold?.held == true
        let channel = context.channel
        guard let decoder = try? pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self) else {
            if endedEarly { channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
            return
        }
        let removed = channel.eventLoop.makePromise(of: Void.self)
        removed.futureResult.whenSuccess {
            if thenReadComplete { channel.pipeline.fireChannelReadComplete() }
            if endedEarly { channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        }
        pipeline.removeHandler(decoder, promise: removed)
    }

    /// Every HTTP handler of the front pipeline (`ProxyServer.configureFront`), but the request decoder.
    private static func removeHTTPServerHandlers(from pipeline: ChannelPipeline.SynchronousOperations) {
        if let handler = try? pipeline.handler(type: RequestHeadLimitHandler.self) {
            pipeline.removeHandler(handler, promise: nil)
        }
        if let handler = try? pipeline.handler(type: HTTPServerPipelineHandler.self) {
            pipeline.removeHandler(handler, promise: nil)
        }
        if let handler = try? pipeline.handler(type: RelayedResponseEncoder.self) {
            pipeline.removeHandler(handler, promise: nil)
        }
    }

    // MARK: plain HTTP

    private func connectUpstream(_ destination: Destination, context: ChannelHandlerContext) {
        var metadata = newMetadata(destination, transport: .http)
        if let policy = reporting.judge(&metadata, host: destination.host, address: nil, complete: false) {
            refuseByPolicy(policy, metadata: metadata, destination: destination, context: context)
            return
        }
        exchange = ExchangeRecord(eventID: metadata.eventID, destination: destination, metadata: metadata, started: .now())

        if let link = upstream, link.destination == destination, link.channel.isActive, link.handler.isIdle {
            var reused = metadata
            reused.resolvedIP = link.resolvedIP
            if let policy = reporting.judge(&reused, host: destination.host, address: link.resolvedIP) {
                exchange = nil
                refuseByPolicy(policy, metadata: reused, destination: destination, context: context)
                return
            }
            exchange?.metadata = reused
            link.handler.attach(to: self)
            reporting.action(target: destination.description, metadata: reused)
            perform(machine.upstreamReady(reused: true), context: context)
            return
        }
        closeUpstream()
        dialUpstream(destination, metadata: metadata, context: context)
    }

    /// Dials a new upstream connection for the exchange in progress; once connected (and its address allowed),
    /// reports it and lets the request go.
    private func dialUpstream(_ destination: Destination, metadata: ConnectMetadata, context: ChannelHandlerContext) {
        let newHandler = UpstreamHTTPHandler()
        newHandler.attach(to: self)
        let boundHandler = NIOLoopBound(newHandler, eventLoop: context.eventLoop)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        connector.connect(to: destination, on: context.eventLoop) { channel in
            do {
                // The head was parsed from the client by llhttp, which refuses CR, LF and NUL in fields, and its
                // framing checked: it is written framed by its own fields (see RelayedRequestEncoder).
                try channel.pipeline.syncOperations.addHandlers([
                    RelayedRequestEncoder(),
                    // 1xx passed on (a 100 Continue the client's Expect waits for), to clients of HTTP/1.1.
                    ByteToMessageHandler(HTTPResponseDecoder(
                        leftOverBytesStrategy: .fireError, informationalResponseStrategy: .forward, limitConfiguration: .init())),
                ])
                try channel.pipeline.syncOperations.addHandler(boundHandler.value)
                return channel.eventLoop.makeSucceededVoidFuture()
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
        }.whenComplete { result in
            let (front, context) = loopBound.value
            var metadata = metadata
            switch result {
            case .success(let channel):
                guard context.channel.isActive else {
                    channel.close(promise: nil)
                    return
                }
                let resolved = channel.remoteAddress?.ipAddress ?? "unknown"
                metadata.resolvedIP = resolved
                if let policy = front.reporting.judge(&metadata, host: destination.host, address: resolved) {
                    channel.close(promise: nil)
                    front.exchange = nil
                    front.refuseByPolicy(policy, metadata: metadata, destination: destination, context: context)
                    return
                }
                front.exchange?.metadata = metadata
                front.upstream = UpstreamLink(
                    destination: destination,
                    channel: channel,
                    handler: boundHandler.value,
                    resolvedIP: resolved
                )
                metadata.resolvedIP = resolved
                front.reporting.action(target: destination.description, metadata: metadata)
                front.perform(front.machine.upstreamReady(), context: context)
                if front.pendingRead, channel.isWritable {
                    front.pendingRead = false
                    context.read()
                }
            case .failure(let error):
                let failure = ProxyError.dial(front.connector.classify(error))
                front.exchange = nil
                front.reportFailure(metadata, destination, failure)
                front.perform(front.machine.connectFailed(failure), context: context)
            }
        }
    }

    /// Enforce mode: answers 403 for a destination a policy blocks, and reports it.
    private func refuseByPolicy(
        _ policy: String, metadata: ConnectMetadata, destination: Destination, context: ChannelHandlerContext
    ) {
        let failure = ProxyError.blockedByPolicy(policy)
        reportFailure(metadata, destination, failure)
        perform(machine.connectFailed(failure), context: context)
    }

    private func closeUpstream() {
        guard let link = upstream else { return }
        upstream = nil
        link.handler.detach()
        link.channel.close(promise: nil)
    }

    private func recordClose(_ record: ExchangeRecord, closedBy: CloseRecord.ClosedBy, reason: String) {
        let body = CloseRecord.Body(
            eventID: record.eventID,
            target: record.destination.description,
            bytesFromClient: record.requestBytes,
            bytesToClient: record.responseBytes,
            durationMs: milliseconds(from: record.started, to: .now()),
            closedBy: closedBy,
            reason: reason,
            status: record.status,
            endedAt: WallClock.rfc3339(unixMillis: WallClock.nowMillis())
        )
        reporting.close(body)
        reporting.logConnection(record.metadata, target: record.destination.description, mode: "forwarded", close: body)
    }
}

@available(*, unavailable)
extension ProxyFrontHandler: Sendable {}

/// In front of the request decoder while a CONNECT is set up: keeps the client's end of input from the decoder,
/// which would drop the bytes it holds after the CONNECT head on seeing it. `removeRequestDecoder` replays the end
/// after those bytes.
final class EndOfInputHold: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    /// The client's input ended while the hold was in place.
    private(set) var held = false

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            held = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

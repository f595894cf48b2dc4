import ClientHello
import ControlPlane
import Interception
import Logging
import NIOCore
import NIOHTTP1
import OpenSSLTLS
import Telemetry

/// The client side of a CONNECT tunnel that may be inspected, until its ClientHello is in: holds the
/// client's first bytes (nothing has been sent upstream yet), then either turns the tunnel into a plain relay
/// (passthrough: the held bytes go on untouched) or sets up interception on both channels and hands the
/// held ClientHello to the TLS server at once (whose output is held until the upstream is verified).
///
/// The upstream is connected (TCP) but not read meanwhile, so a server that speaks first loses nothing.
final class InspectionStartHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    /// Outbound only for `read`: writes pass through untouched.
    typealias OutboundIn = ByteBuffer

    struct Tunnel {
        var upstream: any Channel
        var destination: Destination
        var metadata: ConnectMetadata
        var started: NIODeadline
        /// `upstream` is a kept, verified connection taken for this CONNECT instead of a dial: it serves the
        /// connection if the ClientHello makes its key (name, ALPN offer); any other outcome gives it back and
        /// dials (`withDialledUpstream`).
        var reservation: UpstreamPool.Reservation? = nil
        /// The inspection that decides this tunnel (the one in force when its CONNECT came), if it may be inspected.
        var inspection: Inspection? = nil
        /// `upstream` is a dialled connection whose TLS handshake began before the ClientHello was in: it serves the
        /// connection if the ClientHello makes the same plan; any other outcome closes it and dials
        /// (`withDialledUpstream`).
        var early: EarlyUpstreamHandshake? = nil

        /// Not used after all: a dialled connection is closed, a kept one goes back.
        func discard() {
            if let reservation { reservation.restore() } else { upstream.close(promise: nil) }
        }
    }

    private var tunnel: Tunnel
    private let inspection: Inspection
    private let settings: ConnectionSettings
    private let reporting: Reporting
    private var held: ByteBuffer?
    private var decided = false
    /// The client half-closed while a dial or a decision was awaited: passed on after the held bytes.
    private var halfClosedWhileAwaiting = false
    /// The client's ClientHello, once it is in and being decided on (a leaf may be minting): what a connection the
    /// client leaves early reports of it.
    private var hello: ClientHello?
    /// Why a connection whose client left (or half-closed) before anything was decided carried nothing.
    private var leftEarly: String { hello == nil ? "client closed before its ClientHello" : Self.clientLeftEarly }
    /// Why a connection whose client left after its ClientHello, before an upstream connection was ready, carried
    /// nothing.
    static let clientLeftEarly = "client closed before the upstream connection was ready"
    /// A connection is being dialled after all (`withDialledUpstream`): the client's bytes are held meanwhile.
    private var dialing = false
    private var clientLeftWhileDialing = false
    private var timer: Scheduled<Void>?

    init(tunnel: Tunnel, inspection: Inspection, settings: ConnectionSettings, reporting: Reporting) {
        self.tunnel = tunnel
        self.inspection = inspection
        self.settings = settings
        self.reporting = reporting
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let limit = settings.clientHelloTimeout
        timer = context.eventLoop.scheduleTask(in: limit) {
            let (handler, context) = loopBound.value
            handler.passThrough(reason: "no ClientHello within \(UpstreamConnector.describe(limit))", context: context)
        }
        beginEarlyHandshake()
    }

    /// The client was answered 200 and the upstream's TCP connection is up: its TLS handshake begins now, for what
    /// the ClientHello will most likely ask (`Inspection.earlyHandshakePlan`), while the client makes its
    /// ClientHello. A kept connection needs none.
    private func beginEarlyHandshake() {
        guard tunnel.reservation == nil, tunnel.metadata.transport == .connect,
            let plan = inspection.earlyHandshakePlan(for: tunnel.destination, agent: reporting.agent)
        else { return }
        let recorder = EarlyHandshakeRecorder()
        tunnel.early = EarlyUpstreamHandshake(upstreamName: plan.upstreamName, offer: plan.offer, recorder: recorder)
        do {
            let pipeline = tunnel.upstream.pipeline.syncOperations
            try pipeline.addHandler(
                try OpenSSLTLSHandler(
                    context: inspection.upstreamTLS, serverName: plan.upstreamName, alpn: plan.offer,
                    sessionKey: Inspection.sessionKey(tunnel.destination, upstreamName: plan.upstreamName, offer: plan.offer)))
            try pipeline.addHandler(recorder)
        } catch {
            // The connection may carry a TLS handler whose handshake began: not usable for anything else, nor to
            // serve (it is closed, and another dialled, as for any that does not).
            recorder.setUpFailed()
            reporting.logger.debug("cannot begin the upstream handshake early", metadata: ["error": "\(error)"])
            return
        }
        tunnel.upstream.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !decided || dialing else {
            context.fireChannelRead(data)
            return
        }
        var bytes = unwrapInboundIn(data)
        if held == nil {
            held = bytes
        } else {
            held!.writeBuffer(&bytes)
        }
        // Decided, or being decided (the bytes wait for the decision, the upstream or a dial): only held.
        guard !decided, hello == nil else { return }
        switch ClientHelloParser.parse(held!, limit: settings.clientHelloLimit) {
        case .needMoreData:
            if held!.readableBytes >= settings.clientHelloLimit {
                passThrough(reason: "ClientHello larger than \(settings.clientHelloLimit) bytes", context: context)
            }
        case .parsed(let hello):
            decide(hello: hello, context: context)
        case .notTLS:
            if tunnel.metadata.transport == .connect {
                inspection.habits.note(agent: reporting.agent, destination: tunnel.destination, namedIt: false)
            }
            passThrough(reason: "not TLS", context: context)
        case .malformed(let reason) where reason.contains("server_name") || reason.contains("host_name"):
            // A ClientHello whose only fault is its server name: that would be the client's way out of inspection.
            refuseUnusableName(UnusableServerName(reason: reason), context: context)
        case .malformed, .tooLarge:
            passThrough(reason: "unreadable ClientHello", context: context)
        }
    }

    /// Asked for while the client's bytes could only be held (see `read(context:)`): asked for again when the handler
    /// leaves.
    private var readWithheld = false

    /// Once the ClientHello is in, or while a connection is dialled, the client's bytes are only held until the
    /// decision is carried out, and a decision can wait for the resolver or a dial for seconds. Reading stops
    /// meanwhile, so a client that keeps sending fills its socket's buffers, not the proxy's memory: a TLS client
    /// waits for the server's answer. What was read with the ClientHello is held, and what NIO reads to find an end
    /// of input (at most the socket's receive buffer).
    func read(context: ChannelHandlerContext) {
        if deciding || dialing {
            readWithheld = true
        } else {
            context.read()
        }
    }

    /// Leaves the pipeline; a read withheld meanwhile is asked for again, through the handlers that take over.
    private func leave(context: ChannelHandlerContext) {
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        if readWithheld {
            readWithheld = false
            context.channel.read()
        }
    }

    /// The ClientHello is in and its decision waits (for the resolver, or for a leaf to be minted): what the client
    /// does meanwhile is carried by the decision, never decided on its own.
    private var deciding: Bool { hello != nil && !decided }
    private var clientLeftWhileDeciding = false

    func channelInactive(context: ChannelHandlerContext) {
        if deciding {
            clientLeftWhileDeciding = true
        } else if !decided {
            passThrough(reason: leftEarly, context: context, clientGone: true)
        } else if dialing {
            clientLeftWhileDialing = true
        } else {
            context.fireChannelInactive()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if dialing || deciding, case ChannelEvent.inputClosed = event {
            // Carried by what is decided: a relay gets the half-close after the held bytes, an inspected connection
            // after its handshake's. Never a decision of its own: that would relay a tunnel the policy has not judged.
            halfClosedWhileAwaiting = true
            return
        }
        if !decided, case ChannelEvent.inputClosed = event {
            // The relay that takes over gets the half-close after the held bytes (this handler is gone by then).
            passThrough(reason: leftEarly, context: context, clientHalfClosed: true)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func decide(hello: ClientHello, context: ChannelHandlerContext) {
        // Further bytes (the client may not wait) stay held until the decision is carried out.
        self.hello = hello
        let namesHost = hello.serverName?.lowercased() == tunnel.destination.host.lowercased()
        if tunnel.metadata.transport == .connect {
            inspection.habits.note(agent: reporting.agent, destination: tunnel.destination, namedIt: namesHost)
        }
        // The SNI against the policy before a byte of the ClientHello goes anywhere (the CONNECT host, or for a
        // transparent connection the address, was judged already).
        if let sni = hello.serverName, !namesHost {
            if let refusal = reporting.judge(&tunnel.metadata, host: sni, address: tunnel.metadata.resolvedIP) {
                refuse(byPolicy: refusal, sni: sni, context: context)
                return
            }
        }
        carryOut(decide(hello, sniResolvesToAddress: nil), hello: hello, context: context)
    }

    private func decide(_ hello: ClientHello, sniResolvesToAddress: Bool?) -> InspectionPolicy.Decision {
        inspection.policy.decide(
            agent: reporting.agent,
            connectHost: tunnel.destination.host,
            isTLS: true,
            serverName: hello.serverName,
            now: Inspection.now(),
            sniResolvesToAddress: sniResolvesToAddress
        )
    }

    private func carryOut(_ decision: InspectionPolicy.Decision, hello: ClientHello, context: ChannelHandlerContext) {
        switch decision {
        case .passthroughIfNameResolves(let name):
            // A CONNECT to an address with a passthrough name in its SNI: passed through only if the name is the
            // address's. The ClientHello is in: its timer stops; the client's bytes stay held meanwhile.
            timer?.cancel()
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            UpstreamConnector(settings: settings).name(name, resolvesTo: tunnel.destination.host, on: context.eventLoop)
                .hop(to: context.eventLoop)
                .whenComplete { result in
                    let (handler, context) = loopBound.value
                    guard !handler.decided, !handler.endIfClientLeftWhileDeciding(context: context) else { return }
                    // A name that does not resolve, or not to this address, counts for nothing (decided again
                    // with the answer, which never asks again).
                    let belongs = (try? result.get()) ?? false
                    handler.carryOut(handler.decide(hello, sniResolvesToAddress: belongs), hello: hello, context: context)
                }
        case .passthrough(let reason):
            passThrough(reason: reason, context: context, chosen: true)
        case .pinned(let reason):
            passThrough(reason: reason, context: context)
        case .inspect where inspection.upstreamOffer(forClientOffer: hello.alpn) == nil:
            // Inspection must not change the protocol the two sides speak: what it cannot relay passes through.
            passThrough(
                reason: "the client offers only \(hello.alpn.joined(separator: ", ")) (ALPN), which inspection does not relay",
                context: context)
        case .inspect(let leaf, let upstreamName):
            guard inspection.authority.hasNameConstraints else {
                // Any valid name can be signed: connect upstream at once and mint meanwhile.
                do {
                    try OpenSSLCertificateAuthority.validate(leaf)
                } catch {
                    refuseUnusableName(error, context: context)
                    return
                }
                intercept(hello: hello, leaf: leaf, upstreamName: upstreamName, context: context)
                return
            }
            // The leaf first: a name the CA may not sign (outside its nameConstraints, or not a name a
            // certificate can carry) is passed through, with the reason, rather than refused.
            timer?.cancel()
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            inspection.leaves.leaf(for: leaf, on: context.eventLoop).whenComplete { result in
                let (handler, context) = loopBound.value
                if handler.endIfClientLeftWhileDeciding(context: context) { return }
                switch result {
                case .success:
                    handler.intercept(hello: hello, leaf: leaf, upstreamName: upstreamName, context: context)
                case .failure(let error):
                    switch error as? OpenSSLCertificateAuthority.MintingError {
                    case .outsideNameConstraints?:
                        handler.passThrough(reason: "\(error)", context: context)
                    case .invalidName?:
                        handler.refuseUnusableName(error, context: context)
                    default:
                        handler.reporting.logger.error(
                            "cannot mint a certificate", metadata: ["name": "\(leaf)", "error": "\(error)"])
                        handler.passThrough(reason: "certificate minting failed", context: context)
                    }
                }
            }
        }
    }

    /// A ClientHello's server name that breaks RFC 6066 (a byte outside letters, digits, `-`, `.`, `_`; two names).
    private struct UnusableServerName: Error, CustomStringConvertible {
        var reason: String
        var description: String { "the ClientHello's server name is unusable: \(reason)" }
    }

    /// The name the tunnel would be inspected under (the SNI, or the CONNECT host) is not one a certificate can carry
    /// (`x..y`, `*.example.com`): refused, not passed through, or a client could keep a tunnel the customer wants
    /// inspected out of inspection by the SNI it sends. Nothing the client sent was relayed.
    private func refuseUnusableName(_ error: any Error, context: ChannelHandlerContext) {
        endRefused(context: context) { metadata in
            metadata.sni = self.hello?.serverName
            metadata.alpn = self.hello?.alpn
            metadata.inspection = "refused"
            metadata.error = "refused: \(error)"
        }
    }

    /// `KAIZEN_INSPECT_REQUIRED`: a tunnel that would pass through uninspected (for `reason`) is refused. Nothing the
    /// client sent was relayed; the action is a block saying why.
    private func refuseUninspected(reason: String, context: ChannelHandlerContext) {
        let why = "not inspected: \(reason) (KAIZEN_INSPECT_REQUIRED)"
        // What the client's first bytes were, told as a passed-through tunnel's peek tells it (the action's `tls` and
        // `sni_error`, the SNI-parse metric).
        var peek = ClientHelloPeek(limit: settings.clientHelloLimit)
        var seen: PeekResult
        if hello == nil, let held, case .done(let result) = peek.feed(held) {
            seen = result
        } else if let hello {
            seen = PeekResult(tls: true, hello: hello, sniError: hello.serverName == nil ? ClientHelloPeek.noServerName : nil)
        } else {
            if let held { _ = peek.feed(held) }
            seen = peek.giveUp(because: reason)
        }
        if seen.tls == nil { seen.tls = false }
        endRefused(context: context, verdict: Reporting.blocked(why)) { metadata in
            metadata.tls = seen.tls
            metadata.sniError = seen.sniError
            metadata.sni = seen.hello?.serverName
            metadata.alpn = seen.hello?.alpn
            metadata.inspection = reason
            metadata.outcome = .failed  // refused before anything reached the destination
            metadata.error = why
        }
    }

    /// Enforce mode: the SNI names a destination a policy blocks. Nothing the client sent was relayed; both sides
    /// are closed and the refusal reported.
    private func refuse(byPolicy policy: String, sni: String, context: ChannelHandlerContext) {
        endRefused(context: context) { metadata in
            metadata.sni = sni
            metadata.outcome = .failed  // refused before anything reached the destination
            metadata.error = Reporting.blockedByPolicy(policy)
        }
    }

    /// Ends a TLS tunnel refused at its ClientHello: nothing relayed, the refusal (`describe` fills in why) reported
    /// and logged, both sides closed.
    private func endRefused(
        context: ChannelHandlerContext, verdict: ConnectAction.Verdict = .observed, _ describe: (inout ConnectMetadata) -> Void
    ) {
        guard !decided else { return }
        decided = true
        timer?.cancel()
        var metadata = tunnel.metadata
        metadata.tls = true
        describe(&metadata)
        held = nil
        reporting.action(target: tunnel.destination.description, metadata: metadata, verdict: verdict)
        reporting.logConnection(
            metadata, target: tunnel.destination.description, mode: "none", close: nil, blockedByProxy: verdict.decision == "block")
        discardUpstream()
        context.close(promise: nil)
    }

    /// For any use but the kept connection this CONNECT was answered with (`Tunnel.reservation`), or the connection
    /// whose handshake began early (`Tunnel.early`): that one goes back or is closed, and a connection is dialled
    /// now, judged as the CONNECT's would have been; `proceed` then runs with it in `tunnel.upstream` (at once when
    /// there was neither). A failure ends the client's connection,
    /// reported: the client was answered 200 already.
    /// - Parameter metadata: what is reported should the client leave meanwhile or the dial fail (the ClientHello's
    ///   facts, once it is in).
    private func withDialledUpstream(
        context: ChannelHandlerContext, reporting metadata: ConnectMetadata? = nil, clientGoneReason: String,
        _ proceed: @escaping (InspectionStartHandler, ChannelHandlerContext) -> Void
    ) {
        if let reservation = tunnel.reservation {
            tunnel.reservation = nil
            reservation.restore()
        } else if tunnel.early != nil {
            // Made for another ClientHello than this one: closed, never to carry a byte of this one's.
            discardUpstream()
        } else {
            return proceed(self, context)
        }
        dialing = true
        let destination = tunnel.destination
        let connector = UpstreamConnector(settings: settings)
        let loopBound = NIOLoopBound((self, context, proceed), eventLoop: context.eventLoop)
        connector.connectTunnel(to: destination, on: context.eventLoop, holdingReads: true).whenComplete { result in
            let (handler, context, proceed) = loopBound.value
            handler.dialing = false
            var metadata = metadata ?? handler.tunnel.metadata
            if handler.clientLeftWhileDialing || !context.channel.isActive {
                // No one to relay for: the new connection closes unused, and the client's is reported.
                if case .success(let channel) = result { channel.close(promise: nil) }
                handler.reportClientGone(metadata, reason: clientGoneReason, context: context)
                return
            }
            switch result {
            case .success(let channel):
                metadata.resolvedIP = channel.remoteAddress?.ipAddress
                if let policy = handler.reporting.judge(&metadata, host: destination.host, address: metadata.resolvedIP) {
                    channel.close(promise: nil)
                    handler.endWithoutUpstream(metadata, ProxyError.blockedByPolicy(policy), context: context)
                    return
                }
                handler.tunnel.upstream = channel
                handler.tunnel.metadata = metadata
                proceed(handler, context)
            case .failure(let error):
                handler.endWithoutUpstream(metadata, ProxyError.dial(connector.classify(error)), context: context)
            }
        }
    }

    /// The client closed while its decision waited: nothing it sent is relayed, whatever the decision would have
    /// been (its held bytes could be anything, for any address), and it is reported as a tunnel that passed nothing.
    private func endIfClientLeftWhileDeciding(context: ChannelHandlerContext) -> Bool {
        guard clientLeftWhileDeciding, !decided else { return false }
        decided = true
        discardUpstream()
        reportClientGone(tunnel.metadata, reason: Self.clientLeftEarly, context: context)
        return true
    }

    /// The client left with nothing relayed (before its ClientHello, or while a connection was dialled for it):
    /// its connection is reported, with its close, as a tunnel that passed nothing.
    private func reportClientGone(_ metadata: ConnectMetadata, reason: String, context: ChannelHandlerContext) {
        held = nil
        var metadata = metadata
        metadata.inspection = reason
        if let hello, metadata.tls == nil {
            metadata.tls = true
            metadata.sni = hello.serverName
            if hello.serverName == nil { metadata.sniError = ClientHelloPeek.noServerName }
            metadata.alpn = hello.alpn
        }
        let target = tunnel.destination.description
        reporting.action(target: target, metadata: metadata)
        let close = CloseRecord.Body(
            eventID: metadata.eventID, target: target, bytesFromClient: 0, bytesToClient: 0,
            durationMs: milliseconds(from: tunnel.started, to: .now()), closedBy: .client, reason: "eof",
            endedAt: WallClock.rfc3339(unixMillis: WallClock.nowMillis()))
        reporting.close(close)
        reporting.logConnection(metadata, target: target, mode: "none", close: close)
        if context.channel.isActive { context.close(promise: nil) }
    }

    /// A dial after the CONNECT's 200 failed (or its address is blocked): reported, and the client's connection
    /// closed.
    private func endWithoutUpstream(_ metadata: ConnectMetadata, _ failure: ProxyError, context: ChannelHandlerContext) {
        held = nil
        reporting.connectionFailed(metadata, target: tunnel.destination.description, failure, answeredWithStatus: false)
        context.close(promise: nil)
    }

    /// Destination-only handling: the relay and its peek take over, starting with the held bytes. With
    /// `KAIZEN_INSPECT_REQUIRED`, a tunnel that should be inspected but cannot be is refused instead, unless the
    /// customer chose to pass it through (`chosen`: `KAIZEN_PASSTHROUGH_HOSTS`, `KAIZEN_INSPECT_HOSTS`).
    private func passThrough(
        reason: String,
        context: ChannelHandlerContext,
        clientGone: Bool = false,
        clientHalfClosed: Bool = false,
        chosen: Bool = false
    ) {
        guard !decided else { return }
        // A client gone (even by a reset, mid-ClientHello) is refused too when it sent anything: that would still be
        // relayed. One that sent nothing is recorded as any client that left: nothing was refused.
        let sentNothing = (clientGone || clientHalfClosed) && (held?.readableBytes ?? 0) == 0
        if inspection.inspectRequired, !chosen, !sentNothing {
            refuseUninspected(reason: reason, context: context)
            return
        }
        decided = true
        timer?.cancel()
        if clientGone, tunnel.reservation != nil {
            // Nothing to relay and no one to relay it to: the kept connection goes back, undialled for. (A connection
            // whose handshake began early is closed and another dialled, as the held bytes are relayed on it just as
            // without it.)
            discardUpstream()
            reportClientGone(tunnel.metadata, reason: reason, context: context)
            return
        }
        withDialledUpstream(context: context, clientGoneReason: reason) { handler, context in
            handler.passThroughNow(
                reason: reason, context: context, clientGone: clientGone || handler.clientLeftWhileDialing,
                clientHalfClosed: clientHalfClosed || handler.halfClosedWhileAwaiting)
        }
    }

    private func passThroughNow(reason: String, context: ChannelHandlerContext, clientGone: Bool, clientHalfClosed: Bool) {
        var metadata = tunnel.metadata
        metadata.inspection = reason
        let (session, clientGlue, upstreamGlue) = GlueHandler.tunnel(
            reporting: reporting, metadata: metadata, destination: tunnel.destination, started: tunnel.started,
            settings: settings, eventLoop: context.eventLoop)
        do {
            try tunnel.upstream.pipeline.syncOperations.addHandler(upstreamGlue)
            tunnel.upstream.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
            try context.pipeline.syncOperations.addHandler(clientGlue, position: .after(self))
        } catch {
            reporting.logger.error("cannot set up tunnel", metadata: ["error": "\(error)"])
            tunnel.upstream.close(promise: nil)
            context.close(promise: nil)
            return
        }
        session.start()
        if let held, held.readableBytes > 0 {
            self.held = nil
            context.fireChannelRead(wrapInboundOut(held))
            context.fireChannelReadComplete()
        }
        if clientHalfClosed { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        if clientGone { context.fireChannelInactive() }
        leave(context: context)
    }

    /// Terminates the client's TLS (once the upstream is verified) and re-originates it.
    private func intercept(
        hello: ClientHello,
        leaf: OpenSSLCertificateAuthority.LeafName,
        upstreamName: String,
        context: ChannelHandlerContext
    ) {
        guard !decided else { return }
        decided = true
        timer?.cancel()
        let offer = inspection.upstreamOffer(forClientOffer: hello.alpn) ?? []
        // The kept connection the CONNECT was answered with serves if this ClientHello makes its key; else one kept
        // under that key to the same address, if any, and the reserved one goes back; else one is dialled.
        var reserved: UpstreamPool.Idle?
        if let reservation = tunnel.reservation,
            let key = upstreamKey(address: reservation.idle.channel.remoteAddress?.ipAddress, upstreamName, offer)
        {
            if reservation.key == key && reservation.idle.channel.isActive
                && reservation.idle.reuseUntil > reservation.pool.clock()
            {
                reserved = reservation.idle
                tunnel.reservation = nil
            } else if let kept = reservation.pool.take(key, on: context.eventLoop) {
                reserved = kept
                tunnel.reservation = nil
                tunnel.upstream = kept.channel
                reservation.restore()
            }
        }
        // The handshake begun early serves if this ClientHello asks what it was made for; else a connection is dialled.
        inspection.habits.note(agent: reporting.agent, offer: offer, port: tunnel.destination.port)
        var early: EarlyUpstreamHandshake?
        if let begun = tunnel.early, begun.matches(upstreamName: upstreamName, offer: offer, channel: tunnel.upstream) {
            early = begun
            tunnel.early = nil
            reporting.metrics?.earlyUpstreamHandshake(used: true)
        }
        var facts = tunnel.metadata
        facts.tls = true
        facts.sni = hello.serverName
        facts.alpn = hello.alpn
        withDialledUpstream(
            context: context, reporting: facts, clientGoneReason: Self.clientLeftEarly
        ) { handler, context in
            handler.interceptNow(
                hello: hello, leaf: leaf, upstreamName: upstreamName, offer: offer, reserved: reserved, early: early,
                context: context)
        }
    }

    /// The upstream connection this tunnel was answered with is not used: a kept one goes back, a dialled one (whose
    /// handshake may have begun early) closes.
    private func discardUpstream() {
        if tunnel.early != nil { reporting.metrics?.earlyUpstreamHandshake(used: false) }
        tunnel.discard()
        tunnel.reservation = nil
        tunnel.early = nil
    }

    /// What a kept upstream connection for this tunnel is kept and looked up under.
    private func upstreamKey(address: String?, _ upstreamName: String, _ offer: [String]) -> UpstreamPool.Key? {
        guard let address else { return nil }
        return UpstreamPool.Key(
            agent: reporting.agent, host: tunnel.destination.host.lowercased(), port: tunnel.destination.port,
            address: address, serverName: upstreamName, alpnOffer: offer)
    }

    private func interceptNow(
        hello: ClientHello,
        leaf: OpenSSLCertificateAuthority.LeafName,
        upstreamName: String,
        offer: [String],
        reserved: UpstreamPool.Idle?,
        early: EarlyUpstreamHandshake?,
        context: ChannelHandlerContext
    ) {
        var metadata = tunnel.metadata
        metadata.tls = true
        metadata.sni = hello.serverName
        // As a passed-through tunnel says it: a null `sni` always comes with why.
        if hello.serverName == nil { metadata.sniError = ClientHelloPeek.noServerName }
        metadata.alpn = hello.alpn
        var reported = tunnel.destination
        if metadata.transport == .transparent {
            // As for a transparent tunnel: the SNI names the destination, the address stays in original_dst.
            if let sni = hello.serverName {
                metadata.host = sni
                reported = Destination(host: sni, port: tunnel.destination.port, isIPLiteral: false)
            }
        } else if let sni = hello.serverName {
            metadata.sniMismatch = sni != tunnel.destination.host
        }
        // ALPN mirrored: the upstream is offered what the client offered (less what cannot be relayed), and the
        // client is answered with exactly what the upstream chose, or no ALPN when it chose none.
        // An idle upstream connection an earlier connection of this agent opened to this destination (the same
        // address), verified for the same name and offered the same protocols, serves this one: no handshake. It is
        // the one the CONNECT was answered with (`reserved`), or one kept since.
        let pool = inspection.upstreamPool
        var reuse: (pool: UpstreamPool, key: UpstreamPool.Key)?
        var pooled = reserved
        if pool.isEnabled, let key = upstreamKey(address: tunnel.upstream.remoteAddress?.ipAddress, upstreamName, offer) {
            reuse = (pool, key)
            // A connection whose handshake began early serves this one: none is taken.
            if pooled == nil && early == nil { pooled = pool.take(key, on: context.eventLoop) }
        }
        if let pooled, pooled.channel !== tunnel.upstream {
            // The connection dialed for this CONNECT is not needed.
            tunnel.upstream.close(promise: nil)
        }
        let upstreamChannel = pooled?.channel ?? tunnel.upstream
        // A session from an earlier connection is resumed only by a connection to the same destination, for the same
        // name, with the same ALPN offer.
        let sessionKey = Inspection.sessionKey(tunnel.destination, upstreamName: upstreamName, offer: offer)
        var redial: InterceptedConnection.Redial?
        if pooled != nil, let address = upstreamChannel.remoteAddress {
            // Should the reused connection close before answering the first request, a new one to the same address.
            let connector = UpstreamConnector(settings: settings)
            let host = tunnel.destination.host
            let tlsContext = inspection.upstreamTLS
            redial = { connection in
                let bound = NIOLoopBound(connection, eventLoop: connection.eventLoop)
                return connector.connect(to: address, host: host, on: connection.eventLoop) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let pipeline = channel.pipeline.syncOperations
                        try pipeline.addHandler(
                            try OpenSSLTLSHandler(
                                context: tlsContext, serverName: upstreamName, alpn: offer, sessionKey: sessionKey))
                        try pipeline.addHandler(InterceptedHandshakeHandler(side: .upstream, connection: bound.value))
                    }
                }
            }
        }
        let connection = InterceptedConnection(
            reporting: reporting,
            metadata: metadata,
            destination: reported,
            leaf: leaf,
            started: tunnel.started,
            inspection: inspection,
            idleTimeout: settings.idleTimeout,
            requestHeadLimits: settings.requestHeadLimits,
            clientChannel: context.channel,
            upstreamChannel: upstreamChannel,
            reuse: reuse,
            redial: redial
        )
        if metadata.transport == .transparent, let sni = hello.serverName {
            // As for a transparent tunnel: does the SNI resolve to the address the agent connected to?
            let connector = UpstreamConnector(settings: settings)
            let loopBound = NIOLoopBound(connection, eventLoop: context.eventLoop)
            connector.name(sni, resolvesTo: tunnel.destination.host, on: context.eventLoop)
                .hop(to: context.eventLoop)
                .whenSuccess { loopBound.value.noteSNIMismatch(!$0) }
        }
        let leaves = inspection.leaves
        let upstreamReady = connection.upstreamReady
        let choices = inspection.alpnChoices
        // A name never seen here is often served by a server that was (a CDN's address, one origin for many names):
        // what the server at this address chose for the same offer is the next best guess.
        let serverKey = UpstreamALPNChoices.serverKey(upstreamChannel.remoteAddress, offer: offer)
        let predicted = Self.predictedALPNAnswer(
            offer: offer, pooled: pooled.map { $0.negotiatedProtocol } ?? early?.recorder.negotiated,
            remembered: choices.last(for: sessionKey, orServer: serverKey))
        let upstreamHandler: NIOLoopBound<OpenSSLTLSHandler>
        do {
            let upstreamPipeline = upstreamChannel.pipeline.syncOperations
            if pooled != nil {
                upstreamHandler = NIOLoopBound(
                    try upstreamPipeline.handler(type: OpenSSLTLSHandler.self), eventLoop: context.eventLoop)
            } else if early != nil {
                // Its TLS handler is in place, and what its handshake brought is kept until `release` below.
                upstreamHandler = NIOLoopBound(
                    try upstreamPipeline.handler(type: OpenSSLTLSHandler.self), eventLoop: context.eventLoop)
                try upstreamPipeline.addHandler(InterceptedHandshakeHandler(side: .upstream, connection: connection))
            } else {
                // Upstream: verified TLS first; the client's handshake shows nothing before it succeeds.
                let upstreamTLS = try OpenSSLTLSHandler(
                    context: inspection.upstreamTLS, serverName: upstreamName, alpn: offer, sessionKey: sessionKey)
                try upstreamPipeline.addHandler(upstreamTLS)
                upstreamHandler = NIOLoopBound(upstreamTLS, eventLoop: context.eventLoop)
                // The HTTP handlers come once the upstream has chosen the protocol (HTTP/1.1 or HTTP/2).
                try upstreamPipeline.addHandler(InterceptedHandshakeHandler(side: .upstream, connection: connection))
            }
            // The leaf is minted (or found) now, and the client's handshake is made at once, while the upstream's is
            // under way, answering ALPN with the protocol the upstream will most likely choose. Nothing of it reaches
            // the client (not even the ServerHello) until the upstream is verified; if it is not, the client gets an
            // alert. Should the upstream choose otherwise, the handshake is made again with its choice, so the
            // client is always answered with exactly the upstream's.
            // Whether the upstream was sent what the client sent: its ALPN list whole, its own server name.
            let offerUnchanged = offer == Inspection.relayable(hello.alpn, of: hello.alpn)
            let sniUnchanged = hello.serverName != nil && hello.serverName == upstreamName
            let minted = leaves.leaf(for: leaf, on: context.eventLoop)
            let clientTLS = try OpenSSLTLSHandler(
                context: inspection.clientTLS,
                certificateProvider: { _, eventLoop in minted.hop(to: eventLoop).map { Optional($0) } },
                alpnAnswer: predicted,
                handshakeGate: upstreamReady.futureResult.map {
                    let chosen = upstreamHandler.value.negotiatedProtocol
                    choices.note(chosen, for: sessionKey, server: serverKey)
                    return chosen
                }.flatMapErrorThrowing { [offerUnchanged, sniUnchanged] error in
                    throw Self.gateFailure(error, offerUnchanged: offerUnchanged, sniUnchanged: sniUnchanged)
                }
            )
            let clientPipeline = context.pipeline.syncOperations
            try clientPipeline.addHandler(clientTLS, position: .after(self))
            try clientPipeline.addHandler(
                InterceptedHandshakeHandler(side: .client, connection: connection), position: .after(clientTLS))
            if pooled == nil && early == nil {
                tunnel.upstream.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
            }
        } catch {
            reporting.logger.error("cannot set up inspection", metadata: ["error": "\(error)"])
            upstreamChannel.close(promise: nil)
            context.close(promise: nil)
            return
        }
        connection.start()
        if let pooled { connection.adoptPooledUpstream(pooled) }
        if let early {
            // What the early handshake brought (done, or not yet), as if it had begun now, before the client's
            // ClientHello goes in (as a kept connection is adopted first); then reading on.
            early.recorder.release()
            upstreamChannel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
        // The gate holds the client's handshake back: its ClientHello (and anything after it) goes in now.
        releaseToClientTLS(context: context)
    }

    /// What the client's gate fails with when the upstream's handshake failed: the upstream's error, whose alert the
    /// client is refused with (`OpenSSLTLSHandler.relayedAlerts`) only when it answers exactly what the client sent:
    /// no_application_protocol when the upstream was offered the client's ALPN list unchanged (not one the proxy cut
    /// down), unrecognized_name when it was sent the client's own SNI (not the CONNECT host in place of none),
    /// access_denied when the upstream did not ask the proxy for a client certificate (an answer to the proxy's empty
    /// one is not the client's). Otherwise the client gets internal_error.
    static func gateFailure(_ error: any Error, offerUnchanged: Bool, sniUnchanged: Bool) -> any Error {
        guard var tls = error as? OpenSSLError, let alert = tls.peerAlert else { return error }
        let answersTheClient =
            switch alert {
            case 120: offerUnchanged
            case 112: sniUnchanged
            case 49: !tls.certificateRequested
            default: false
            }
        if !answersTheClient { tls.peerAlert = nil }
        return tls
    }

    /// The protocol the upstream will most likely choose, so the client's handshake can be made before it has: none
    /// when the client offers no ALPN (nor is the upstream offered any); what a kept connection chose, when one
    /// serves; what this destination's upstream chose last time for the same offer (or, for a name not seen yet,
    /// the server at the same address); else the first protocol offered (`h2` before `http/1.1`, as clients list
    /// them; an upstream without ALPN answers none).
    static func predictedALPNAnswer(offer: [String], pooled: String??, remembered: String??) -> String? {
        if offer.isEmpty { return nil }
        if let pooled { return pooled }
        if let remembered, remembered.map(offer.contains) ?? true { return remembered }
        return offer.first
    }

    /// Hands the held bytes (the ClientHello, and anything after it) to the client's TLS, and leaves.
    private func releaseToClientTLS(context: ChannelHandlerContext) {
        if let held {
            self.held = nil
            context.fireChannelRead(wrapInboundOut(held))
            context.fireChannelReadComplete()
        }
        if halfClosedWhileAwaiting { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        leave(context: context)
    }
}

@available(*, unavailable)
extension InspectionStartHandler: Sendable {}

import AccessControl
import ControlPlane
import HTTP1Codec
import Interception
import Logging
import Foundation
import NIOCore
import Telemetry
import NIOHTTP1
import OpenSSLTLS
import Synchronization

/// One intercepted CONNECT tunnel: the client's TLS terminated with a minted leaf, a verified TLS connection
/// to the upstream, and the HTTP exchanges between them: HTTP/1.1 one at a time, or HTTP/2 stream by stream,
/// whichever the upstream chose (ALPN) and the client was answered with. Each exchange is reported when it ends
/// (the connection's facts plus method, path, status and body sizes); a connection that carried none is reported
/// once, with why (for example the upstream's verification error). Loop-bound: both channels share one loop.
///
/// Until the upstream's handshake is over only an `InterceptedHandshakeHandler` sits above each side's TLS; the
/// HTTP handlers for the negotiated protocol replace them then, before the client's handshake sends anything (it is
/// made meanwhile, behind its gate: `OpenSSLTLSHandler`'s `handshakeGate`).
final class InterceptedConnection {
    private let reporting: Reporting
    private var metadata: ConnectMetadata
    /// The CONNECT host in lower case, which each request's Host is compared with.
    private lazy var lowercasedHost = metadata.host.lowercased()
    /// The policy's answer for the request in progress (`policy`, `would_block`), set when its head arrives.
    private var requestPolicy: (policy: String?, wouldBlock: Bool?) = (nil, nil)
    /// Requests refused by a policy (enforce mode), for the connection's log line.
    private var blockedRequests = 0
    private let target: String
    private let leaf: OpenSSLCertificateAuthority.LeafName
    private let started: NIODeadline
    private let inspection: Inspection
    private let idleTimeout: TimeAmount
    private let requestHeadLimits: RequestHeadLimits
    let eventLoop: any EventLoop
    private let clientChannel: any Channel
    /// The upstream's channel: the one dialled for this connection or taken from the pool, or the one that replaced
    /// a reused connection that closed before answering (`redialUpstream`).
    private var upstreamChannel: any Channel
    /// The HTTP/2 relay, when the upstream chose h2.
    private var http2: InterceptedHTTP2?
    /// Where the upstream connection goes when the client's side ends while it is idle and fit for another
    /// request (`releaseUpstream`); nil: it closes with this connection.
    private let reuse: (pool: UpstreamPool, key: UpstreamPool.Key)?
    /// What the upstream connection brings to a connection that takes it from the pool: known once it is verified
    /// and speaks HTTP/1.1.
    private var upstreamOrigin: (openedBy: String, negotiated: String?, resumed: Bool, reuseUntil: Int64)?
    /// The upstream connection went to the pool: no longer this connection's to use or close.
    private var upstreamReleased = false
    /// The request in progress asked to close, and that was kept from the upstream (whose connection may serve
    /// another client connection): its response tells the client the connection closes.
    private var closeKeptFromUpstream = false
    /// Opens a new upstream connection to where a pooled one went (the same address, verified for the same name,
    /// offered the same protocols): its channel comes with the TLS client and an `InterceptedHandshakeHandler`.
    typealias Redial = (InterceptedConnection) -> EventLoopFuture<any Channel>
    private let redial: Redial?
    /// The first request on an upstream connection taken from the pool, as sent, while it may be sent again on a
    /// new connection if that one closes before answering: idempotent, with no body, nothing of a response yet
    /// (RFC 9112 §9.3.1). An idle connection can be closed by the upstream just as it is reused.
    private var replayable: RelayedRequestPart?
    /// A new upstream connection is being opened for `replayable`; why the reused one ended.
    private var redialing: String?

    /// Succeeds when the upstream's TLS handshake (with verification) has; the client's handshake sends nothing
    /// before.
    let upstreamReady: EventLoopPromise<Void>
    private var machine: InterceptedExchangeStateMachine
    private(set) var client: InterceptedClientHandler?
    private(set) var upstream: InterceptedUpstreamHandler?

    private var clientHandshakeDone = false
    private var upstreamHandshakeDone = false
    /// Why the connection did not carry requests, when it failed before them.
    private var failure: (inspection: String, error: String?)?
    private var reportedExchanges = 0
    /// When the exchange in progress began (its request head arrived).
    private var exchangeStartedAt: String?
    private var requestBytes: UInt64 = 0
    private var responseBytes: UInt64 = 0
    private var closedBy: CloseRecord.ClosedBy?
    private var closeReason: String?
    private var finished = false
    /// The proxy is stopping: close once the exchange in progress (if any) has ended.
    private var quiescing = false
    /// Set after a 101: the connection is a byte relay from then on.
    private var relays: (client: UpgradedRelayHandler, upstream: UpgradedRelayHandler)?
    /// Each side's channel, whichever handler (HTTP or, after an upgrade, the relay) saw it close.
    private var clientOpen = true
    private var upstreamOpen = true
    private var lastActivity: NIODeadline
    private var idleTimer: Scheduled<Void>?
    /// Counts the HTTP/1.1 exchanges (one per request head): whose a response write is.
    private var exchangeSerial = 0
    /// Response body bytes count once written to the client's connection (as over HTTP/2); exchange reports wait for
    /// those writes, at most `reportWaitLimit` (`ResponseDeliveryLedger`).
    private var ledger = ResponseDeliveryLedger<AwaitingReport>()
    private var reportWaitTimer: Scheduled<Void>?
    static let reportWaitLimit: TimeAmount = .seconds(10)
    /// The error of an exchange reported at `reportWaitLimit` before its response was all written (HTTP/1.1 and
    /// HTTP/2 alike).
    static let notTakenInTime =
        "the client had not taken the whole response \(reportWaitLimit.nanoseconds / 1_000_000_000) s after the proxy passed it on: reported with what was written by then"

    private struct AwaitingReport {
        var exchange: InterceptedExchangeStateMachine.Exchange
        var startedAt: String?
        var policy: (policy: String?, wouldBlock: Bool?)
        var error: String?
    }

    init(
        reporting: Reporting,
        metadata: ConnectMetadata,
        destination: Destination,
        leaf: OpenSSLCertificateAuthority.LeafName,
        started: NIODeadline,
        inspection: Inspection,
        idleTimeout: TimeAmount,
        requestHeadLimits: RequestHeadLimits,
        clientChannel: any Channel,
        upstreamChannel: any Channel,
        reuse: (pool: UpstreamPool, key: UpstreamPool.Key)? = nil,
        redial: Redial? = nil
    ) {
        self.reuse = reuse
        self.redial = redial
        self.reporting = reporting
        self.metadata = metadata
        self.target = destination.description
        self.leaf = leaf
        self.started = started
        self.inspection = inspection
        self.idleTimeout = idleTimeout
        self.requestHeadLimits = requestHeadLimits
        self.clientChannel = clientChannel
        self.upstreamChannel = upstreamChannel
        self.eventLoop = clientChannel.eventLoop
        self.upstreamReady = clientChannel.eventLoop.makePromise(of: Void.self)
        self.machine = InterceptedExchangeStateMachine(reportQuery: inspection.reportQuery, connectionHost: metadata.host.lowercased())
        self.lastActivity = started
        Self.alive.add(1, ordering: .relaxed)
    }

    deinit {
        Self.alive.subtract(1, ordering: .relaxed)
    }

    /// Connections not yet freed: a test checks each is, once closed (a reference cycle would keep every one).
    package static let alive = Atomic<Int>(0)

    /// Transparent mode: whether the SNI fails to resolve to the original destination (known shortly after the
    /// connection starts; requests reported before it is known go without it).
    func noteSNIMismatch(_ mismatch: Bool) { metadata.sniMismatch = mismatch }

    func attach(client: InterceptedClientHandler) { self.client = client }
    func attach(upstream: InterceptedUpstreamHandler) { self.upstream = upstream }

    private var counted = false

    func start() {
        scheduleIdleCheck(in: idleTimeout)
        if !counted, let metrics = reporting.metrics {
            counted = true
            metrics.tunnelOpened(inspected: true)
        }
    }

    var mayReadClient: Bool { machine.mayReadClient }

    /// The request awaiting its response asked to switch protocols: the client's bytes after it may be the new
    /// protocol's.
    var awaitsUpgrade: Bool { machine.current?.upgrade != nil }

    // MARK: handshakes

    /// The upstream is verified and chose `negotiated` (ALPN): both sides get the HTTP handlers for it (the
    /// client's handshake has sent nothing yet: its gate opens on `upstreamReady`), then the client's handshake
    /// may go on.
    /// - Parameter resumed: the upstream resumed a session of an earlier connection (verified then).
    /// - Parameter authentication: when the upstream was authenticated and its certificates' earliest notAfter
    ///   (`OpenSSLTLSHandler.serverAuthentication`): how long the connection may serve later client connections.
    func upstreamHandshakeCompleted(
        negotiated: String?, resumed: Bool = false, authentication: (at: Int64, notAfter: Int64)? = nil
    ) {
        if redialing != nil {
            redialCompleted(negotiated: negotiated, resumed: resumed, authentication: authentication)
            return
        }
        upstreamHandshakeDone = true
        reporting.metrics?.upstreamHandshake(resumed: resumed)
        if resumed { metadata.upstreamResumed = true }
        metadata.negotiatedProtocol = negotiated ?? "http/1.1"
        noteOpenedHere(negotiated: negotiated, resumed: resumed, authentication: authentication)
        do {
            if negotiated == "h2" {
                let http2 = InterceptedHTTP2(connection: self, limits: inspection.http2Limits, eventLoop: eventLoop)
                self.http2 = http2
                try http2.install(client: clientChannel, upstream: upstreamChannel)
            } else {
                try installHTTP1()
            }
            try removeHandshakeHandlers()
        } catch {
            reporting.logger.error("cannot set up inspection", metadata: ["error": "\(error)"])
            failure = ("relay not set up", "cannot set up \(negotiated ?? "http/1.1") relay: \(error)")
            upstreamReady.fail(error)
            closeBoth()
            return
        }
        upstreamReady.succeed(())
    }

    /// The upstream is an idle connection an earlier inspected connection opened and verified (taken from the
    /// pool, its HTTP/1.1 handlers in place): it is this connection's now, and the client's handshake may go on.
    func adoptPooledUpstream(_ idle: UpstreamPool.Idle) {
        upstreamHandshakeDone = true
        reporting.metrics?.upstreamReused()
        metadata.upstreamReusedFrom = idle.openedBy
        if idle.resumed { metadata.upstreamResumed = true }
        metadata.negotiatedProtocol = idle.negotiatedProtocol ?? "http/1.1"
        upstreamOrigin = (idle.openedBy, idle.negotiatedProtocol, idle.resumed, idle.reuseUntil)
        do {
            IdleUpstreamHandler.remove(from: upstreamChannel)
            try upstreamChannel.pipeline.syncOperations.addHandler(InterceptedUpstreamHandler(connection: self), position: .last)
            try installHTTP1(upstream: false)
            try removeHandshakeHandlers(from: [clientChannel])
        } catch {
            reporting.logger.error("cannot set up inspection", metadata: ["error": "\(error)"])
            failure = ("relay not set up", "cannot set up http/1.1 relay: \(error)")
            upstreamReady.fail(error)
            closeBoth()
            return
        }
        upstreamReady.succeed(())
    }

    /// HTTP/1.1 on both sides: requests decoded from the client and encoded to the upstream, responses back.
    /// - Parameter upstream: false when the upstream's handlers are in place already (a connection from the pool).
    private func installHTTP1(upstream: Bool = true) throws {
        if upstream { try Self.addAfterHandshakeHandler(upstreamChannel, upstreamHTTP1Handlers()) }
        // Below the client's TLS: the socket stays in the read set between a request and its response.
        let clientPipeline = clientChannel.pipeline.syncOperations
        try clientPipeline.addHandler(
            ReadAheadHandler(), position: .before(try clientPipeline.handler(type: OpenSSLTLSHandler.self)))
        // The same request-head limits as the proxy's own port, on the decrypted stream (the client's handler
        // enforces them: its codec the sizes, its timer the time).
        try Self.addAfterHandshakeHandler(clientChannel, [InterceptedClientHandler(connection: self, limits: requestHeadLimits)])
    }

    /// The upstream's HTTP/1.1 handler, above its TLS: it writes requests and decodes responses itself.
    private func upstreamHTTP1Handlers() -> [any ChannelHandler] {
        [InterceptedUpstreamHandler(connection: self)]
    }

    /// The upstream connection was opened and verified by this connection: what it brings to a later one that takes
    /// it from the pool (nothing, for HTTP/2, or when connections are not kept).
    private func noteOpenedHere(negotiated: String?, resumed: Bool, authentication: (at: Int64, notAfter: Int64)?) {
        guard let reuse, negotiated != "h2", let authentication else {
            upstreamOrigin = nil
            return
        }
        upstreamOrigin = (
            metadata.eventID.description, negotiated, resumed,
            reuse.pool.reuseUntil(authenticatedAt: authentication.at, notAfter: authentication.notAfter)
        )
    }

    /// Adds `handlers`, in order, right after the channel's `InterceptedHandshakeHandler` (above its TLS).
    static func addAfterHandshakeHandler(_ channel: any Channel, _ handlers: [any ChannelHandler]) throws {
        let pipeline = channel.pipeline.syncOperations
        var anchor: any ChannelHandler = try pipeline.handler(type: InterceptedHandshakeHandler.self)
        for handler in handlers {
            try pipeline.addHandler(handler, position: .after(anchor))
            anchor = handler
        }
    }

    private func removeHandshakeHandlers(from channels: [any Channel]? = nil) throws {
        for channel in channels ?? [clientChannel, upstreamChannel] {
            let pipeline = channel.pipeline.syncOperations
            pipeline.removeHandler(try pipeline.handler(type: InterceptedHandshakeHandler.self), promise: nil)
        }
    }

    func upstreamFailed(_ error: any Error) {
        if let closedBecause = redialing {
            // The new connection's handshake failed: counted as the first connection's would be.
            if (error as? OpenSSLError)?.verifyResult != nil {
                reporting.metrics?.upstreamVerificationFailed()
            } else {
                reporting.metrics?.upstreamHandshakeFailed()
            }
            redialFailed(closedBecause, Self.describeUpstreamFailure(error))
            return
        }
        // A response the upstream sent but that could not be read may mean it acted on the request: not sent again.
        if upstreamHandshakeDone, !(error is HTTP1ParseError), redialUpstream(because: GlueHandler.describe(error)) {
            return
        }
        // An upstream that asked for a client certificate and then ended the handshake (TLS 1.2) or the connection
        // right after it (TLS 1.3: the handshake is over for the proxy before the server has read its empty
        // Certificate) requires one: mutual TLS, which inspection cannot do (the agent's key is not the proxy's).
        if let tls = error as? OpenSSLError, Self.showsRequiredClientCertificate(tls, handshakeDone: upstreamHandshakeDone) {
            upstreamRequiresClientCertificate(error)
        }
        if !upstreamHandshakeDone {
            // Only a certificate that did not verify is "not trusted": an upstream that refused the handshake (an
            // ALPN offer it cannot answer, a name it does not serve) or closed during it is not a trust problem.
            let verificationFailed = (error as? OpenSSLError)?.verifyResult != nil
            if failure == nil {
                failure = (verificationFailed ? Self.upstreamNotTrusted : Self.upstreamHandshakeFailed, Self.describeUpstreamFailure(error))
            }
            if let verify = (error as? OpenSSLError)?.verifyResult {
                reporting.hints.give(
                    .upstreamNotVerified,
                    "an inspected upstream's certificate did not verify (\(verify), \(reportedTarget)): its client got an alert and nothing was relayed; if your upstreams use a private CA, trust it with KAIZEN_UPSTREAM_CA_FILE",
                    to: reporting.logger)
            }
            noteClose(by: .upstream, reason: "tls_error")
            upstreamReady.fail(error)
        } else {
            noteClose(by: .upstream, reason: "error: \(GlueHandler.describe(error))")
            if answerBadGatewayIfAwaitingResponse(because: GlueHandler.describe(error)) { return }
        }
        closeBoth()
    }

    /// `metadata.inspection` when the upstream's certificate did not verify, when it required a client certificate,
    /// and when its handshake failed otherwise.
    static let upstreamNotTrusted = "upstream not trusted"
    static let upstreamRequiresClientCertificate = "upstream requires a client certificate"
    static let upstreamHandshakeFailed = "upstream handshake failed"

    /// Whether `error` is an upstream refusing the proxy's empty client certificate: it asked for one (a
    /// CertificateRequest), and then ended the connection with certificate_required (TLS 1.3, which only a server that
    /// requires one sends), or ended the handshake with handshake_failure or bad_certificate (TLS 1.2, where that is
    /// how OpenSSL and most servers refuse a missing certificate). A server that only asks (optional client
    /// authentication: kube-apiserver, nginx `ssl_verify_client optional`) and fails later for another reason is not
    /// taken for one.
    static func showsRequiredClientCertificate(_ error: OpenSSLError, handshakeDone: Bool) -> Bool {
        guard error.certificateRequested, let alert = error.peerAlert else { return false }
        return alert == 116 || (!handshakeDone && (alert == 40 || alert == 42))
    }

    /// The upstream requires a client certificate: the connection reports why (and so does each request it carried),
    /// and this agent's next connections to the name pass through untouched for `KAIZEN_PINNED_PASSTHROUGH` (as after
    /// a client refused the minted certificate), so an agent with its own certificate reaches the upstream with it.
    private func upstreamRequiresClientCertificate(_ error: any Error) {
        guard failure?.inspection != Self.upstreamRequiresClientCertificate else { return }
        failure = (Self.upstreamRequiresClientCertificate, Self.describeUpstreamFailure(error))
        reporting.metrics?.upstreamHandshakeFailed()
        inspection.policy.notePinned(
            agent: reporting.agent, leaf.description, now: Inspection.now(), reason: .upstreamRequiresClientCertificate)
        reporting.hints.give(
            .upstreamRequiresClientCertificate,
            "an inspected upstream requires a client certificate (mutual TLS, \(reportedTarget)), which inspection cannot present: this agent's connections to it now pass through (with KAIZEN_INSPECT_REQUIRED: are refused) for KAIZEN_PINNED_PASSTHROUGH; list it in KAIZEN_PASSTHROUGH_HOSTS to pass it through from the first",
            to: reporting.logger)
    }

    static func describeUpstreamFailure(_ error: any Error) -> String {
        if let tls = error as? OpenSSLError, let verify = tls.verifyResult {
            return "upstream certificate verification failed: \(verify)"
        }
        return "upstream TLS failed: \(GlueHandler.describe(error))"
    }

    /// The upstream connection taken from the pool ended (`reason`) before it answered anything on this client
    /// connection, and nothing is lost by replacing it: no request had gone on it yet (it closed while idle, as an
    /// upstream's idle timeout can end a connection just as it is taken), or only the first, which may be sent again
    /// (`replayable`). A new upstream connection to the same address is opened and verified as any; what the client
    /// sends meanwhile is held (`heldForUpstream`) and goes on it. False when it may not.
    private func redialUpstream(because reason: String) -> Bool {
        guard let redial, metadata.upstreamReusedFrom != nil, redialing == nil, clientOpen, !closing, relays == nil,
            machine.completed == 0
        else { return false }
        if let exchange = machine.current {
            guard let head = replayable, exchange.status == nil else { return false }
            heldForUpstream = [head]
            if exchange.requestEnded { heldForUpstream.append(.end(trailers: nil)) }
        } else {
            heldForUpstream = []
        }
        replayable = nil
        redialing = reason
        upstreamOpen = false
        // Whatever the old connection's end was, the new one's is its own.
        upstreamEndUnconfirmed = false
        // The old channel is no longer this connection's: its handler leaves, so its close is not heard.
        upstream?.leavePipeline()
        upstream = nil
        upstreamChannel.close(promise: nil)
        reporting.logger.debug(
            "a reused upstream connection closed before answering; opening a new one",
            metadata: ["target": "\(target)", "reason": "\(reason)"])
        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        redial(self).hop(to: eventLoop).whenComplete { result in
            let connection = loopBound.value
            switch result {
            case .success(let channel):
                guard connection.redialing != nil, !connection.finished, !connection.closing else {
                    channel.close(promise: nil)
                    return
                }
                connection.upstreamChannel = channel
                connection.upstreamOpen = true
                channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
            case .failure(let error):
                connection.redialFailed(reason, GlueHandler.describe(error))
            }
        }
        return true
    }

    /// Request parts for the upstream while a new connection is being opened (`redialUpstream`), in order.
    private var heldForUpstream: [RelayedRequestPart] = []

    /// The new upstream connection (`redialUpstream`) is verified: it takes the old one's place, and what was held
    /// for the upstream goes on it.
    private func redialCompleted(negotiated: String?, resumed: Bool, authentication: (at: Int64, notAfter: Int64)?) {
        guard let closedBecause = redialing else { return }
        guard negotiated != "h2" else {
            // Another protocol than the one the client was answered with.
            return redialFailed(closedBecause, "the new connection chose h2")
        }
        redialing = nil
        reporting.metrics?.upstreamHandshake(resumed: resumed)
        metadata.upstreamReusedFrom = nil
        metadata.upstreamResumed = resumed ? true : nil
        noteOpenedHere(negotiated: negotiated, resumed: resumed, authentication: authentication)
        do {
            try Self.addAfterHandshakeHandler(upstreamChannel, upstreamHTTP1Handlers())
            try removeHandshakeHandlers(from: [upstreamChannel])
        } catch {
            return redialFailed(closedBecause, "\(error)")
        }
        let held = heldForUpstream
        heldForUpstream = []
        for part in held { upstream?.send(part) }
        upstream?.flush()
        client?.resumeReading()
    }

    /// No new upstream connection (it could not be opened or verified): a request awaiting its response is
    /// answered 502, and the connection closes.
    private func redialFailed(_ closedBecause: String, _ reason: String) {
        guard redialing != nil else { return }
        redialing = nil
        heldForUpstream = []
        upstreamOpen = false
        noteClose(by: .upstream, reason: "error: \(reason)")
        if !answerBadGatewayIfAwaitingResponse(because: "\(closedBecause); a new connection failed: \(reason)") {
            closeBoth()
        }
        upstreamChannel.close(promise: nil)
        finishIfBothClosed()
    }

    /// The upstream's connection ended (`reason`) while the first request on the connection awaited its response:
    /// the client is answered 502, as on the proxy's own port, instead of a close with no answer at all, and the
    /// exchange is reported with that status. False (nothing done) otherwise:
    /// - on a connection that already carried a request, the close is passed on as it came: an origin closing an
    ///   idle keep-alive connection as the next request arrives is the case RFC 9112 §9.3.1 lets a client retry
    ///   (an idempotent request), which it would not do after a 502;
    /// - when the client left first, or the proxy is closing: the exchange is the client's or the proxy's to cut.
    /// A request held to be refused after this one (`deferredRejection`) was reported already; its answer is not
    /// sent.
    private func answerBadGatewayIfAwaitingResponse(because reason: String) -> Bool {
        guard let client, clientOpen, !closing, relays == nil, clientHandshakeDone, machine.completed == 0,
            var exchange = machine.current, exchange.status == nil
        else {
            return false
        }
        _ = machine.connectionClosed()
        closing = true
        let error = ProxyError.upstreamClosed(reason)
        exchange.status = Int(error.status.code)
        report(exchange, error: error.reason)
        client.dropHeldParts()
        client.sendError(error.status, reason: error.reason)
        closeUpstream()
        return true
    }

    func clientHandshakeCompleted() {
        clientHandshakeDone = true
        metadata.intercepted = true
    }

    /// The events every handler above the client's or the upstream's TLS acts on alike, whichever protocol it
    /// speaks: the proxy stopping (client side) and a half-close (either side closes).
    func lifecycleEvent(_ event: Any, clientSide: Bool, context: ChannelHandlerContext) {
        switch event {
        case is ProxyShutdownEvent where clientSide:
            shutdown()
        case is ChannelShouldQuiesceEvent where clientSide:
            quiesce()
        case ChannelEvent.inputClosed:
            context.close(promise: nil)
        default:
            break
        }
    }

    /// Something happened on the connection (idle time is counted from the last of these).
    func touch() { lastActivity = .now() }

    func clientFailed(_ error: any Error) {
        // A handshake refused behind its gate showed the client nothing of ours: not a refusal of our certificate.
        if !clientHandshakeDone && failure == nil && upstreamHandshakeDone && !(error is TLSHandshakeWithheld) {
            // The upstream was fine and the client was shown our leaf, then refused it: most likely pinning or
            // a client that does not trust the CA. Later connections to the name pass through untouched.
            failure = ("tls_intercept_failed", "client refused the inspection certificate: \(GlueHandler.describe(error))")
            // An alert or an end of stream refuses the certificate; a TCP reset says nothing about it (a network
            // fault, a killed process), so it does not take the name out of inspection for an hour.
            if (error as? IOError)?.errnoCode != ECONNRESET {
                inspection.policy.notePinned(agent: reporting.agent, leaf.description, now: Inspection.now())
            }
        }
        if failure == nil, let withheld = error as? TLSHandshakeWithheld {
            failure = ("tls_error", "the client's TLS handshake failed before it was sent anything: \(withheld)")
        }
        noteClose(by: .client, reason: clientHandshakeDone ? "error: \(GlueHandler.describe(error))" : "tls_error")
        closeBoth()
    }

    // MARK: HTTP

    func fromClient(_ part: HTTP1MessageDecoder.Part) {
        lastActivity = .now()
        switch part {
        case .head(let head):
            exchangeSerial += 1
            exchangeStartedAt = WallClock.rfc3339(unixMillis: WallClock.nowMillis())
            let action = machine.requestHead(head)
            client?.respondingTo(method: machine.current?.method ?? head.method)
            guard action == .forward else {
                // Refused or out of turn: whatever is reported is not this head's policy.
                requestPolicy = (nil, nil)
                handle(action, forward: .head(head, withoutCloseOption: false))
                return
            }
            // The host the request names (an absolute-form URI's, else Host), and the SNI: each must pass.
            if reporting.policy != nil {
                let verdict = judge(Self.namesToJudge(
                    requestHosts: machine.current?.requestHosts ?? [], sni: metadata.sni,
                    connectHost: metadata.host))
                requestPolicy = (verdict.policy, verdict.wouldBlock)
                if let refusal = verdict.refusal {
                    refuse(byPolicy: refusal)
                    return
                }
            }
            var withoutCloseOption = false
            if machine.current?.clientCloses == true {
                if upstreamOrigin != nil, head.version.minor == 1 {
                    // `Connection: close` is about the client's connection (RFC 9110 §7.6.1): the upstream's may
                    // serve another client connection, so the upstream is not told. The response tells the client.
                    withoutCloseOption = true
                    closeKeptFromUpstream = true
                } else {
                    // HTTP/1.0 without keep-alive: the upstream will close after its response.
                    machine.upstreamAskedToClose()
                }
            }
            let forward = RelayedRequestPart.head(head, withoutCloseOption: withoutCloseOption)
            if metadata.upstreamReusedFrom != nil, machine.completed == 0, Self.mayBeSentAgain(head) {
                replayable = forward
            }
            handle(action, forward: forward)
        case .body(let bytes):
            if bytes.readableBytes > 0 { replayable = nil }
            requestBytes &+= UInt64(bytes.readableBytes)
            handle(machine.requestBody(bytes.readableBytes), forward: .body(bytes))
        case .end(let trailers):
            handle(machine.requestEnd(), forward: .end(trailers: trailers))
        }
    }

    func fromUpstream(_ part: HTTP1MessageDecoder.Part) {
        lastActivity = .now()
        let action: InterceptedExchangeStateMachine.Action
        let forward: RelayedResponsePart
        /// The final response's end (not a 1xx's): the exchange is whole once it is written.
        var endsResponse = false
        switch part {
        case .head(let head):
            replayable = nil
            guard (100...599).contains(head.status) else {
                // A status outside 100–599: the client's reading of what follows cannot be known. Not relayed.
                upstreamFailed(HTTP1ParseError.invalidStatus)
                return
            }
            if head.status == 101, machine.current?.upgrade == nil {
                // A switch no request asked for would turn the connection into a relay of bytes no one reads or
                // judges (the next "request" on it would go unreported). Not relayed, as on the plain-HTTP path.
                upstreamFailed(HTTP1ParseError.unrequestedSwitch)
                return
            }
            action = machine.responseHead(head)
            var announcingClose = false
            if closeKeptFromUpstream && head.status >= 200 {
                // The client asked to close; the upstream was not told (its connection may outlive this one).
                closeKeptFromUpstream = false
                announcingClose = true
            }
            forward = .head(head, announcingClose: announcingClose)
        case .body(let bytes):
            // Counted when written to the client (`delivered`), not here.
            action = machine.responseBody(bytes.readableBytes)
            forward = .body(bytes)
        case .end(let trailers):
            endsResponse = machine.current?.status != nil
            action = machine.responseEnd()
            forward = .end(trailers: trailers)
        }
        switch action {
        case .none:
            break
        case .forward:
            sendToClient(forward, endsResponse: endsResponse)
        case .refuseResponse(let reason):
            refuseUpstreamResponse(reason)
        case .forwardAndComplete(let exchange, let thenClose):
            sendToClient(forward, flush: true, endsResponse: endsResponse)
            // A body that ended with the upstream's connection, which closed without close_notify: its end is
            // not confirmed (anyone on the path can cut a TCP connection). The client is told no more than that.
            let unconfirmed = exchange.closeDelimited && upstreamEndUnconfirmed
            report(exchange, error: unconfirmed ? Self.unconfirmedEnd : nil)
            if unconfirmed {
                noteClose(by: .upstream, reason: "eof_without_close_notify")
                client?.closeAfterWrites(notify: false)
                upstream?.close()
            } else if let rejection = deferredRejection {
                noteClose(by: .proxy, reason: "bad_request")
                if exchange.closeDelimited {
                    // The client reads until the close: an answer now would be read as part of that body.
                    client?.closeAfterWrites()
                } else {
                    client?.sendError(rejection.status, reason: rejection.answer)
                }
                upstream?.close()
            } else if thenClose && !exchange.upstreamCloses && !quiescing {
                // Only the client asked to close: the upstream's connection may serve another client connection.
                noteClose(by: .client, reason: "eof")
                if !releaseUpstream() { upstream?.close() }
                client?.closeAfterWrites()
            } else if thenClose || quiescing {
                noteClose(by: quiescing ? .proxy : .upstream, reason: quiescing ? "shutdown" : "eof")
                client?.closeAfterWrites()
                upstream?.close()
            } else {
                client?.resumeReading()
            }
        case .forwardAndUpgrade(let exchange):
            sendToClient(forward, flush: true, endsResponse: endsResponse)
            report(exchange, error: nil)
            if deferredRejection != nil {
                // Bytes after the request were refused: the connection closes rather than relay without them.
                noteClose(by: .proxy, reason: "bad_request")
                client?.closeAfterWrites()
                upstream?.close()
            } else {
                upgrade()
            }
        case .reject, .close:
            closeBoth()
        }
    }

    /// Writes a response part to the client. Its body bytes count as delivered once a tracked write made with or
    /// after them has completed (`delivered`), and the response's end when `endsResponse` once its own write has: not
    /// when read from the upstream, nor while they wait in the proxy's buffers for a client that does not read.
    private func sendToClient(_ part: RelayedResponsePart, flush: Bool = false, endsResponse: Bool = false) {
        guard let client else { return }
        if case .body(let bytes) = part { ledger.handed(bytes.readableBytes) }
        guard endsResponse || (flush && ledger.untrackedBytes > 0) else {
            client.send(part, flush: flush)
            return
        }
        guard let written = client.send(part, flush: flush, tracked: true) else { return }
        track(written, endsResponse: endsResponse)
    }

    /// Flushes the client's connection; body bytes written since the last tracked write get one (an empty write
    /// whose promise completes with theirs).
    private func flushClient() {
        guard let client else { return }
        if ledger.untrackedBytes > 0, let written = client.flush(tracked: true) {
            track(written, endsResponse: false)
        } else {
            client.flush()
        }
    }

    private func track(_ written: EventLoopFuture<Void>, endsResponse: Bool) {
        let write = ledger.track(serial: exchangeSerial, endsResponse: endsResponse)
        written.assumeIsolated().whenComplete { result in
            let written = (try? result.get()) != nil
            if written { self.responseBytes &+= write.bytes }
            self.ledger.completed(write, written: written)
            while let ready = self.ledger.nextReady() { self.reportDelivered(ready) }
            self.stopReportWaitIfNone()
        }
    }

    /// Reports waited `reportWaitLimit` for the client to take their responses: each is reported now, with what was
    /// written by then and why it is not whole.
    private func reportOverdue() {
        reportWaitTimer = nil
        while let ready = ledger.nextWaiting(overdue: true) { reportDelivered(ready) }
    }

    private func stopReportWaitIfNone() {
        guard ledger.waitingCount == 0, let timer = reportWaitTimer else { return }
        timer.cancel()
        reportWaitTimer = nil
    }

    /// The upstream's response broke a limit (`InterceptedExchangeStateMachine.responseHeadLimit`: 1xx responses
    /// without end): nothing more of it is relayed or read. The client gets a 502 when no final head went to it (the
    /// 1xx before were interim), else its connection is cut; the exchange is reported with the reason and both sides
    /// close. Logged as an HTTP/2 upstream flooding a stream is.
    private func refuseUpstreamResponse(_ reason: String) {
        let answer = ProxyError.unusableResponse(reason)
        reporting.logger.warning(
            "closing an inspected HTTP/1.1 connection: the upstream flooded a response",
            metadata: ["target": "\(target)", "side": "upstream", "flood": "\(reason)"])
        upstream?.discardInput()
        noteClose(by: .upstream, reason: "error: \(answer.reason)")
        closing = true
        guard var exchange = machine.connectionClosed() else { return closeBoth() }
        if exchange.status == nil, let client, clientOpen {
            exchange.status = Int(answer.status.code)
            report(exchange, error: answer.reason)
            client.dropHeldParts()
            client.sendError(answer.status, reason: answer.reason)
        } else {
            report(exchange, error: answer.reason)
            client?.close(notify: false)
        }
        closeUpstream()
    }

    /// After a 101: both sides' HTTP handlers give way to a byte relay (bytes already read past the 101, on
    /// either side, flow into it as the decoders leave).
    private func upgrade() {
        guard let client, let upstream else { return }
        let (clientRelay, upstreamRelay) = UpgradedRelayHandler.matchedPair(connection: self)
        let leftovers: (client: ByteBuffer?, upstream: ByteBuffer?)
        do {
            leftovers = (try client.replace(with: clientRelay), try upstream.replace(with: upstreamRelay))
        } catch {
            reporting.logger.error("cannot switch an upgraded connection to a relay", metadata: ["error": "\(error)"])
            closeBoth()
            return
        }
        relays = (clientRelay, upstreamRelay)
        // What each side sent past the upgrade, now that both relays are in place.
        clientRelay.relay(leftover: leftovers.client)
        upstreamRelay.relay(leftover: leftovers.upstream)
        clientRelay.startReading()
        upstreamRelay.startReading()
        reporting.logger.debug("intercepted connection upgraded to a relay", metadata: ["target": "\(target)"])
    }

    /// Bytes relayed after an upgrade, for the close record.
    func relayed(_ count: Int, fromClient: Bool) {
        lastActivity = .now()
        if fromClient { requestBytes &+= UInt64(count) } else { responseBytes &+= UInt64(count) }
    }

    private func handle(_ action: InterceptedExchangeStateMachine.Action, forward: RelayedRequestPart) {
        switch action {
        case .none:
            break
        case .forward:
            if redialing != nil {
                heldForUpstream.append(forward)
            } else {
                upstream?.send(forward)
            }
        case .forwardAndComplete(let exchange, let thenClose):
            // Only a response end completes an exchange in practice; a request end after an early response
            // can too (its end is as confirmed as the upstream made it, see `fromUpstream`).
            upstream?.send(forward, flush: true)
            let unconfirmed = exchange.closeDelimited && upstreamEndUnconfirmed
            report(exchange, error: unconfirmed ? Self.unconfirmedEnd : nil)
            if thenClose {
                // After the response has gone out (a close now would drop what the client has not taken yet).
                closing = true
                client?.closeAfterWrites(notify: !unconfirmed)
                upstream?.close()
            } else {
                client?.resumeReading()
            }
        case .forwardAndUpgrade(let exchange):
            upstream?.send(forward, flush: true)
            report(exchange, error: nil)
            upgrade()
        case .reject(let reason):
            var exchange = machine.connectionClosed()
            exchange?.status = 400
            reporting.logger.info(
                "rejected an intercepted request", metadata: ["target": "\(target)", "status": "400", "reason": "\(reason)"])
            if let exchange { report(exchange, error: "rejected: \(reason)") }
            noteClose(by: .proxy, reason: "bad_request")
            // Nothing after this request is decoded: the rest of its body, cut by the close, is not another rejection.
            client?.dropHeldParts()
            client?.sendBadRequest(reason: reason)
            upstream?.close()
        case .close:
            closeBoth()
        case .refuseResponse:
            break  // a response's answer, never a request's
        }
    }

    /// Whether a policy blocks any of `hosts` (each at the connection's address); with no policies, nothing.
    func judge(_ hosts: [String]) -> (policy: String?, wouldBlock: Bool?, refusal: String?) {
        guard reporting.policy != nil else { return (nil, nil, nil) }
        var judged = metadata
        var refusal: String? = nil
        for host in hosts where refusal == nil {
            refusal = reporting.judge(&judged, host: host, address: metadata.resolvedIP)
        }
        return (judged.policy, judged.wouldBlock, refusal)
    }

    /// The names a request asks for (`requestHosts`: for HTTP/1.1 an absolute-form URI's authority and the Host,
    /// for HTTP/2 the `:authority` and the Host), judged on this connection, with its SNI.
    func namesToJudge(requestHosts: [String]) -> [String] {
        Self.namesToJudge(requestHosts: requestHosts, sni: metadata.sni, connectHost: metadata.host)
    }
    var reportQuery: Bool { inspection.reportQuery }
    var logger: Logger { reporting.logger }
    var reportedTarget: String { target }

    /// The names a request inside an inspected connection asks for, each judged by the policy: those the request
    /// gives (an absolute-form URI's authority, by which an origin routes, RFC 9112 §3.2.2; the Host header), the
    /// SNI (a front end may route by it); the CONNECT host when there is none of these. Each once.
    static func namesToJudge(requestHosts: [String], sni: String?, connectHost: String) -> [String] {
        var hosts = requestHosts
        if let sni { hosts.append(sni.lowercased()) }
        if hosts.isEmpty { hosts.append(connectHost) }
        var seen = Set<String>()
        return hosts.filter { seen.insert($0).inserted }
    }

    /// Enforce mode: the request's destination is blocked by a policy: answer 403, report it, close.
    private func refuse(byPolicy policy: String) {
        blockedRequests += 1
        let answer = ProxyError.blockedByPolicy(policy)
        reporting.logger.info(
            "refused an intercepted request",
            metadata: ["target": "\(target)", "status": "403", "reason": "\(answer.reason)"])
        var exchange = machine.connectionClosed() ?? InterceptedExchangeStateMachine.Exchange(method: "", path: "")
        exchange.status = 403
        report(exchange, error: answer.reason)
        noteClose(by: .proxy, reason: "blocked_by_policy")
        client?.dropHeldParts()
        client?.sendError(answer.status, reason: answer.reason)
        upstream?.close()
    }

    /// A rejection of bytes that came after a request whose response is still on its way (pipelined): reported
    /// now, answered once that response has gone out (never inside it), then the connection closes. Requests
    /// held behind it are not forwarded. False when no response is awaited (answer at once).
    /// - Parameters: `answer` is the text the client gets, `reason` what the report says.
    private func deferRejection(status: HTTPResponseStatus, answer: String, reason: String) -> Bool {
        guard deferredRejection == nil, let awaiting = machine.current, awaiting.requestEnded else {
            return deferredRejection != nil
        }
        deferredRejection = (status, answer, reason, false)
        client?.dropHeldParts()
        return true
    }

    /// Set by `deferRejection`: the answer to send once the awaited response has ended, and the refusal's report,
    /// made after the awaited exchange's (the connection's first request keeps the connection's event id).
    private var deferredRejection: (status: HTTPResponseStatus, answer: String, reason: String, reported: Bool)?

    /// Reports the refusal `deferRejection` held, once: after the exchange it waited behind was reported, or when the
    /// connection ends without that exchange completing.
    private func reportDeferredRejection() {
        guard let rejection = deferredRejection, !rejection.reported else { return }
        deferredRejection!.reported = true
        var rejected = InterceptedExchangeStateMachine.Exchange(method: "", path: "")
        rejected.status = Int(rejection.status.code)
        report(rejected, startedAt: nil, policy: (nil, nil), error: "rejected: \(rejection.reason)")
    }

    /// A request head broke a limit (too long, too many fields, too slow): answer its status, report it, close.
    func clientBrokeLimit(_ limit: RequestLimitError) {
        let answer = limit.proxyError
        reporting.logger.info(
            "rejected an intercepted request",
            metadata: ["target": "\(target)", "status": "\(answer.status.code)", "reason": "\(answer.reason)"])
        if deferRejection(status: answer.status, answer: answer.reason, reason: answer.reason) { return }
        var exchange = machine.connectionClosed() ?? InterceptedExchangeStateMachine.Exchange(method: "", path: "")
        exchange.status = Int(answer.status.code)
        report(exchange, error: "rejected: \(answer.reason)")
        noteClose(by: .proxy, reason: "bad_request")
        client?.sendError(answer.status, reason: answer.reason)
        upstream?.close()
    }

    /// The client's input ended inside a request whose final response has already ended (an origin that refused an
    /// upload early, `413` and `Connection: close`, and a client that then stopped sending its body): not a
    /// malformed request. The exchange is reported with the response's status when the connection ends, and says
    /// the request was cut after it. False (nothing done) when no response has ended.
    func clientStoppedAfterTheResponse() -> Bool {
        // A response framed by its length or chunks: one that ended with the upstream's connection is cut as well.
        guard !closing, let exchange = machine.current, exchange.responseEnded, !exchange.closeDelimited, !exchange.requestEnded
        else { return false }
        requestCutAfterResponse = true
        noteClose(by: .client, reason: "eof")
        closeBoth()
        return true
    }

    /// What an exchange whose request the client stopped sending after its response had ended reports.
    static let requestCutAfterResponse = "request cut short: the client stopped sending it after the response"
    private var requestCutAfterResponse = false

    private func cutReason(_ cut: InterceptedExchangeStateMachine.Exchange) -> String {
        requestCutAfterResponse && cut.responseEnded ? Self.requestCutAfterResponse : Self.cutShort
    }

    /// The request could not be parsed (the codec refused it): answer 400, report it, close.
    func clientSentMalformedRequest(_ error: HTTP1ParseError) {
        // A request the proxy's own close cut off (its decoder finds it incomplete) is reported as cut.
        guard !closing else { return }
        let reason = "malformed request: \(error)"
        reporting.logger.info(
            "rejected an intercepted request", metadata: ["target": "\(target)", "status": "400", "reason": "\(reason)"])
        if deferRejection(status: .badRequest, answer: "bad request: \(reason)", reason: reason) { return }
        // Nothing of it reached the upstream whole (a partial body is cut off with the connection): a request
        // that did is answered first (`deferRejection`).
        var exchange = machine.connectionClosed() ?? InterceptedExchangeStateMachine.Exchange(method: "", path: "")
        exchange.status = 400
        report(exchange, error: "rejected: \(reason)")
        noteClose(by: .proxy, reason: "bad_request")
        client?.sendBadRequest(reason: reason)
        upstream?.close()
    }

    func clientReadComplete() { upstream?.flush() }
    func upstreamReadComplete() { flushClient() }

    // MARK: closing

    func noteClose(by who: CloseRecord.ClosedBy, reason: String) {
        guard closedBy == nil else { return }
        closedBy = who
        closeReason = reason
    }

    /// The client's channel closed (seen by the HTTP handler, or by the relay after an upgrade).
    func clientClosed() {
        clientOpen = false
        noteClose(by: .client, reason: "eof")
        if closing || !releaseUpstream() { closeUpstream() }
        finishIfBothClosed()
    }

    private func closeUpstream() {
        if !upstreamReleased { upstreamChannel.close(promise: nil) }
    }

    /// Gives the upstream connection to the pool, for the next inspected connection of this agent to this
    /// destination, when the client's side has ended (or ends once the response now going out has) and the
    /// upstream's is fit for another request: verified HTTP/1.1, idle (no exchange open, the last response kept the
    /// connection open and was complete), not bound to this client by its authentication (NTLM, Negotiate), not
    /// upgraded, the proxy not stopping. True when it is no longer this connection's (kept, or closed by the pool
    /// for want of room).
    private func releaseUpstream() -> Bool {
        guard let reuse, let origin = upstreamOrigin, let upstream, upstream.isBetweenResponses, upstreamOpen,
            !upstreamReleased, http2 == nil,
            relays == nil, !quiescing, failure == nil, machine.current == nil, machine.upstreamReusable, redialing == nil,
            !upstreamEndUnconfirmed, deferredRejection == nil
        else { return false }
        upstreamReleased = true
        upstreamOpen = false
        self.upstream = nil
        upstream.leavePipeline()
        let idle = UpstreamPool.Idle(
            channel: upstreamChannel, negotiatedProtocol: origin.negotiated, resumed: origin.resumed,
            openedBy: origin.openedBy, reuseUntil: origin.reuseUntil)
        if !reuse.pool.keep(idle, key: reuse.key) { upstreamChannel.close(promise: nil) }
        return true
    }

    func upstreamClosed() {
        if let closedBecause = redialing {
            // The new connection's handshake handler: it closed before it was verified.
            redialFailed(closedBecause, "connection closed during the TLS handshake")
            return
        }
        if redialUpstream(because: "connection closed") { return }
        upstreamOpen = false
        noteClose(by: .upstream, reason: "eof")
        if !upstreamHandshakeDone {
            upstreamReady.fail(ChannelError.ioOnClosedChannel)
            if failure == nil { failure = (Self.upstreamHandshakeFailed, "upstream closed during the TLS handshake") }
        }
        if answerBadGatewayIfAwaitingResponse(because: "connection closed") {
            finishIfBothClosed()
            return
        }
        closing = true
        if let client {
            // A body with no length that ended with this close, while its request was still being sent, is
            // confirmed only by close_notify (an exchange complete before it was handled when it ended).
            let unconfirmed = upstreamEndUnconfirmed && machine.current?.closeDelimited == true
            client.closeAfterWrites(notify: !unconfirmed)
        } else if let http2 {
            http2.closeClientAfterWrites()
        } else {
            clientChannel.close(promise: nil)
        }
        finishIfBothClosed()
    }

    func closeBoth() {
        closing = true
        // An exchange still open is cut here, and reported so now: the upstream's decoder may yet hand on an end
        // for a body with no length as the channel closes, which must not pass for a complete response.
        if let cut = machine.connectionClosed() {
            // Reported before anything closes: a close can finish the connection at once, which reports it as
            // one that carried no request if none was reported yet.
            report(cut, error: cutReason(cut))
            if cut.status != nil && !cut.responseEnded {
                // A response partly relayed ends without close_notify, so the client cannot take the cut for its
                // end (one with no length would look complete).
                client?.close(notify: false)
            }
        }
        clientChannel.close(promise: nil)
        closeUpstream()
    }

    /// Whether a request may be sent again on a new connection when the one it went on closed before answering: an
    /// idempotent method (RFC 9110 §9.2.2) and no body (one could not be sent twice without keeping it).
    static func mayBeSentAgain(_ head: HTTP1Head) -> Bool {
        guard head.methodIs("GET") || head.methodIs("HEAD") || head.methodIs("OPTIONS") || head.methodIs("TRACE")
            || head.methodIs("PUT") || head.methodIs("DELETE")
        else { return false }
        return !head.fields.indices.contains { index in
            (head.fieldNameLength(index) == 14 && head.nameIs(index, "content-length") && !head.valueIs(index, "0"))
                || (head.fieldNameLength(index) == 17 && head.nameIs(index, "transfer-encoding"))
        }
    }

    /// Whether a name a request gave (its Host, an absolute-form authority) is the connection's `host` (lowercase):
    /// case aside, and a trailing dot aside (`example.com.` is `example.com`, fully qualified), so neither is reported
    /// as a host of its own.
    static func namesSameHost(_ requested: String, _ host: String) -> Bool {
        var name = requested.lowercased()
        if name.count > 1, name.hasSuffix(".") { name.removeLast() }
        if name == host { return true }
        // One IPv6 address written two ways (`0:0:0:0:0:0:0:1`, `::1`).
        guard name.contains(":"), let address = IPAddress(name) else { return false }
        return address == IPAddress(host)
    }

    /// What an exchange the connection's end cut short reports.
    static let cutShort = "connection closed before the exchange completed"

    /// The proxy is closing the connection: what the client's decoder says about a request cut off by that
    /// close is not the client's fault (it is reported as cut, not as a malformed request).
    private var closing = false

    /// What an exchange whose close-delimited body ended without the upstream's close_notify reports.
    static let unconfirmedEnd = "response end not confirmed: the upstream closed without TLS close_notify"

    /// The upstream's connection ended while its TLS session was open (no close_notify).
    private var upstreamEndUnconfirmed = false

    func upstreamClosedWithoutNotify() { upstreamEndUnconfirmed = true }

    /// The proxy is draining: an idle keep-alive connection closes now, a busy one after its exchange (HTTP/2:
    /// the client is told GOAWAY, and the connection closes once its open streams have ended).
    func quiesce() {
        quiescing = true
        if let http2 {
            http2.quiesce()
            return
        }
        guard relays == nil, machine.current == nil else { return }
        noteClose(by: .proxy, reason: "shutdown")
        closeBoth()
    }

    func shutdown() {
        noteClose(by: .proxy, reason: "shutdown")
        closeBoth()
    }

    private func finishIfBothClosed() {
        guard !clientOpen, !upstreamOpen else { return }
        finish()
    }

    private func finish() {
        guard !finished else { return }
        finished = true
        http2?.detach()
        http2 = nil
        if counted { reporting.metrics?.tunnelClosed(inspected: true) }
        idleTimer?.cancel()
        idleTimer = nil
        if !upstreamHandshakeDone { upstreamReady.fail(ChannelError.ioOnClosedChannel) }
        // Exchanges whose writes to the client had not all completed: reported with what was written.
        while let ready = ledger.nextWaiting(overdue: false) { reportDelivered(ready) }
        stopReportWaitIfNone()
        if let cut = machine.connectionClosed() {
            report(cut, error: cutReason(cut))
        }
        reportDeferredRejection()
        let requests = reportedExchanges
        var connection = metadata
        if let failure {
            connection.intercepted = false
            connection.inspection = failure.inspection
            connection.error = failure.error
        }
        if reportedExchanges == 0 { reporting.action(target: target, metadata: connection) }
        let body = CloseRecord.Body(
            eventID: metadata.eventID,
            target: target,
            bytesFromClient: requestBytes,
            bytesToClient: responseBytes,
            durationMs: milliseconds(from: started, to: .now()),
            closedBy: closedBy ?? .proxy,
            reason: closeReason ?? "eof",
            endedAt: WallClock.rfc3339(unixMillis: WallClock.nowMillis())
        )
        reporting.close(body)
        reporting.logConnection(
            connection, target: target, mode: failure == nil ? "inspected" : "none", close: body, requests: requests,
            blockedRequests: blockedRequests)
        // The handlers hold this connection and it holds them: both sides are closed, so the cycle is broken here
        // (otherwise every inspected connection would stay in memory).
        client = nil
        upstream = nil
        relays = nil
    }

    /// Reports an HTTP/1.1 exchange once the writes of its response to the client have completed (`runAwaitingReports`):
    /// its response body counts the bytes written to the client, and a response whose end was read but not written
    /// (the client left first) is reported as cut, as over HTTP/2.
    private func report(_ exchange: InterceptedExchangeStateMachine.Exchange, error: String?) {
        let waiting = AwaitingReport(exchange: exchange, startedAt: exchangeStartedAt, policy: requestPolicy, error: error)
        exchangeStartedAt = nil
        if finished {
            while let earlier = ledger.nextWaiting(overdue: false) { reportDelivered(earlier) }
            return reportDelivered(ledger.reportNow(waiting, serial: exchangeSerial))
        }
        switch ledger.queue(waiting, serial: exchangeSerial) {
        case .reportNow(let ready):
            reportDelivered(ready)
        case .wait(let startTimer):
            guard startTimer else { return }
            let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
            reportWaitTimer = eventLoop.scheduleTask(in: Self.reportWaitLimit) { loopBound.value.reportOverdue() }
        }
    }

    private func reportDelivered(_ one: ResponseDeliveryLedger<AwaitingReport>.Ready) {
        var exchange = one.report.exchange
        exchange.responseBodyBytes = one.bodyBytes
        var error = one.report.error
        if one.overdue, error == nil || error == Self.unconfirmedEnd {
            error = Self.notTakenInTime
        } else if exchange.responseEnded, !one.endWritten, error == nil || error == Self.unconfirmedEnd {
            error = Self.cutShort
        }
        report(exchange, startedAt: one.report.startedAt, policy: one.report.policy, error: error)
        // A request refused behind this one (`deferRejection`) is reported after it, in the order they came.
        reportDeferredRejection()
    }

    /// Reports one exchange (an HTTP/1.1 request and its response, or an HTTP/2 stream): the connection's facts
    /// plus the request's. The first one carries the connection's event ID.
    func report(
        _ exchange: InterceptedExchangeStateMachine.Exchange, startedAt: String?,
        policy requestPolicy: (policy: String?, wouldBlock: Bool?), error: String?, blocked: Bool = false
    ) {
        if blocked { blockedRequests += 1 }
        var request = metadata
        request.eventID = reportedExchanges == 0 ? metadata.eventID : EventID.generate()
        request.connectionID = metadata.eventID
        request.startedAt = startedAt ?? metadata.startedAt
        request.intercepted = true
        request.method = exchange.method.isEmpty ? nil : exchange.method
        request.path = exchange.path.isEmpty ? nil : exchange.path
        request.status = exchange.status
        request.requestBodyBytes = exchange.requestBodyBytes
        request.responseBodyBytes = exchange.responseBodyBytes
        request.error = error
        request.policy = requestPolicy.policy
        request.wouldBlock = requestPolicy.wouldBlock
        request.upgrade = exchange.upgraded ? exchange.upgrade.map(Reporting.printable) : nil
        if let failure, failure.inspection == Self.upstreamRequiresClientCertificate {
            // A request already sent when the upstream refused the proxy's empty certificate (TLS 1.3 refuses after the
            // handshake): it says why it got no answer.
            request.inspection = failure.inspection
        }
        if let other = exchange.requestHosts.first(where: { $0 != lowercasedHost && !Self.namesSameHost($0, lowercasedHost) }) {
            request.requestHost = Reporting.printable(other)
        }
        reportedExchanges += 1
        reporting.action(target: target, metadata: request)
    }

    private func scheduleIdleCheck(in delay: TimeAmount) {
        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        idleTimer = eventLoop.scheduleTask(in: delay) { loopBound.value.idleCheck() }
    }

    private func idleCheck() {
        guard !finished else { return }
        let idle = NIODeadline.now() - lastActivity
        if idle >= idleTimeout {
            noteClose(by: .proxy, reason: "idle_timeout")
            closeBoth()
        } else {
            scheduleIdleCheck(in: idleTimeout - idle)
        }
    }
}

@available(*, unavailable)
extension InterceptedConnection: Sendable {}

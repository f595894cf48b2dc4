import ClientHello
import ControlPlane
import OpenSSLTLS
import Logging
import NIOCore
import Telemetry

/// The record of one CONNECT tunnel: byte counts, the SNI peek, who closed it and why, and the idle timer.
///
/// Loop-bound: both glue handlers and the peek handler run on the tunnel's one event loop. The action is
/// emitted as soon as the peek has an answer (or the tunnel ends first); the close record when both sides
/// are closed.
final class TunnelSession {
    enum Side: String {
        case client
        case upstream
    }

    private let reporting: Reporting
    private var metadata: ConnectMetadata
    private var target: String
    private let requestedHost: String
    private let started: NIODeadline
    private let idleTimeout: TimeAmount
    private let eventLoop: any EventLoop

    private(set) var bytesFromClient: UInt64 = 0
    private(set) var bytesToClient: UInt64 = 0
    private var lastActivity: NIODeadline
    private var actionSent = false
    private var closedBy: CloseRecord.ClosedBy?
    private var closeReason: String?
    private var inactiveSides: Set<Side> = []
    private var idleTimer: Scheduled<Void>?
    private var recorded = false
    /// Closes both channels; set by the glue handlers once they are paired.
    var closeBoth: ((_ reason: String) -> Void)?
    /// Transparent mode: whether a name (SNI or Host) resolves to the original destination. The action waits
    /// for the answer; the data never does.
    var nameBelongs: ((_ name: String) -> EventLoopFuture<Bool>)?

    init(
        reporting: Reporting,
        metadata: ConnectMetadata,
        destination: Destination,
        started: NIODeadline,
        idleTimeout: TimeAmount,
        eventLoop: any EventLoop
    ) {
        self.reporting = reporting
        self.metadata = metadata
        self.target = destination.description
        self.requestedHost = destination.host
        self.started = started
        self.lastActivity = started
        self.idleTimeout = idleTimeout
        self.eventLoop = eventLoop
        self.holdsClientBytes = reporting.policy?.enforcing ?? false
    }

    /// Whether `start` counted this tunnel in the active-tunnels gauge (so `finish` takes it off once).
    private var counted = false

    /// Starts the idle timer.
    func start() {
        // Setting up the relay flushes the client's early bytes, and a failed flush can end the tunnel first.
        guard !recorded else { return }
        scheduleIdleCheck(in: idleTimeout)
        if !counted, let metrics = reporting.metrics {
            counted = true
            metrics.tunnelOpened(inspected: false)
        }
    }

    /// Enforce mode: the client's bytes wait (in the client glue) until the policy has judged the SNI or Host, so a
    /// refused tunnel never carried a byte to the destination. Observe mode holds nothing.
    private(set) var holdsClientBytes: Bool
    /// Set by the client glue: sends what it held and lets the relay run.
    var releaseClientBytes: (() -> Void)?

    /// A transparent connection's first bytes, seen before its dial failed: the TLS fields, and the name it asked for
    /// (the SNI, else a plain-HTTP request's host) as its host. The target to report by, when there is a name.
    static func note(_ result: PeekResult, in metadata: inout ConnectMetadata) -> String? {
        metadata.tls = result.tls ?? false
        metadata.sni = result.hello?.serverName
        metadata.sniError = result.sniError
        metadata.alpn = result.hello?.alpn
        guard let name = result.hello?.serverName ?? (result.tls == false ? result.httpNames?.host : nil) else { return nil }
        metadata.host = name
        return Destination(host: name, port: metadata.port, isIPLiteral: OpenSSLConnection.isIPAddress(name)).description
    }

    func peekConcluded(_ result: PeekResult) {
        metadata.tls = result.tls ?? false
        metadata.sni = result.hello?.serverName
        metadata.sniError = result.sniError
        if let hello = result.hello {
            metadata.alpn = hello.alpn
        }
        if result.tls == true && result.hello == nil, let refusal = reporting.judgeUnreadableServerName(&metadata) {
            // A handshake the proxy could not read may still name a blocked host to a server that can read it.
            refuse(byPolicy: refusal)
            return
        }
        if metadata.transport == .transparent {
            // No host was asked for: the SNI (or, for plain HTTP, the request's host: its absolute-form target's,
            // else its Host) names the destination; the original address stays in original_dst.
            let httpNames = metadata.sni == nil && result.tls == false ? result.httpNames : nil
            let name = metadata.sni ?? httpNames?.host
            if let name { rename(to: name) }
            if let httpNames, let refusal = judgeOtherHTTPNames(httpNames, besides: name) {
                refuse(byPolicy: refusal)
                return
            }
            if httpNames != nil { watchLaterRequests() }
            guard let name, let nameBelongs else {
                judgeTransparent(name: name, belongs: true)
                return
            }
            // Does the name belong to the address the agent connected to? The policy counts the name only if it
            // does; the action says so either way.
            let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
            nameBelongs(name).hop(to: eventLoop).whenComplete { result in
                let session = loopBound.value
                let belongs = (try? result.get()) ?? false
                session.metadata.sniMismatch = !belongs
                session.judgeTransparent(name: name, belongs: belongs)
            }
            return
        }
        if let sni = metadata.sni {
            metadata.sniMismatch = sni != requestedHost
            if sni.lowercased() != requestedHost.lowercased(),
                let refusal = reporting.judge(&metadata, host: sni, address: metadata.resolvedIP)
            {
                refuse(byPolicy: refusal)
                return
            }
        } else if result.tls == false, let names = result.httpNames {
            // Plain HTTP inside the tunnel: every host it names other than the CONNECT's (its absolute-form target,
            // each Host; a shared front could route it there) is reported and judged as an SNI would be, and one that
            // is no host name at all is refused as an unreadable ClientHello is. Only the first request is looked at,
            // as only the first ClientHello is.
            if let refusal = judgeOtherHTTPNames(names, besides: requestedHost) {
                refuse(byPolicy: refusal)
                return
            }
        }
        if result.tls == false, result.httpNames != nil { watchLaterRequests() }
        allow()
    }

    /// Enforce mode, plain HTTP: the tunnel's later requests (keep-alive, pipelined) are judged too, head by head,
    /// before their bytes go on (`mayForward`). Observe mode reports the first request only.
    private var watcher: PlainRequestWatcher?
    /// The name the tunnel is reported by, which a later request's names are compared with.
    private var watchedName: String?

    private func watchLaterRequests() {
        guard reporting.policy?.enforcing == true else { return }
        watcher = PlainRequestWatcher(limit: 64 * 1024)
        watchedName = metadata.transport == .transparent ? metadata.host : requestedHost
    }

    /// How many of the client's `bytes` may go on to the destination: all (nil), unless a later request's head they
    /// complete names a host a policy blocks, or cannot be framed while the policies judge names. Then that request
    /// is reported as refused, and only the bytes before it may go on: its head never goes on whole.
    func forwardable(_ bytes: ByteBuffer) -> Int? {
        guard watcher != nil, !recorded else { return nil }
        for finding in watcher!.feed(bytes) {
            var request = metadata
            request.policy = nil
            request.wouldBlock = nil
            request.requestHost = nil
            let refusal: String?
            let start: Int
            switch finding {
            case .head(let names, let at):
                start = at
                refusal = judgeOtherHTTPNames(names, besides: watchedName, in: &request)
            case .unreadable(let why, let at):
                start = at
                request.error = why
                refusal = reporting.judgeUnreadableServerName(&request, reason: PolicyCheck.unjudgedHostReason)
            }
            if let refusal {
                let before = max(0, min(bytes.readableBytes, start - watcher!.fedBefore))
                refuseLaterRequest(refusal, request)
                return before
            }
        }
        if watcher!.stopped { watcher = nil }
        return nil
    }

    /// A later request of the tunnel named a blocked host: reported as an action of its own (with the tunnel's
    /// event ID as `connection_id`); the glue sends on what came before it, and no more.
    private func refuseLaterRequest(_ policy: String, _ request: ConnectMetadata) {
        watcher = nil
        var action = request
        action.connectionID = metadata.eventID
        action.eventID = EventID.generate()
        action.startedAt = WallClock.rfc3339(unixMillis: WallClock.nowMillis())
        action.outcome = .failed
        action.error = [Reporting.blockedByPolicy(policy), request.error].compactMap { $0 }.joined(separator: ": ")
        action.firstSeen = nil
        reporting.action(target: target, metadata: action)
        noteClose(by: .proxy, reason: "blocked_by_policy")
    }


    /// A plain-HTTP request's names other than `besides` (the CONNECT's host, or the name a transparent connection is
    /// reported by): the first is reported as `request_host`, and each is judged as an SNI would be; a value that is no
    /// host, or a head that could not be read whole, is judged as an unreadable ClientHello is. The refusal, if any.
    private func judgeOtherHTTPNames(_ names: HTTPHostSniff.Names, besides: String?) -> String? {
        judgeOtherHTTPNames(names, besides: besides, in: &metadata)
    }

    private func judgeOtherHTTPNames(_ names: HTTPHostSniff.Names, besides: String?, in metadata: inout ConnectMetadata) -> String? {
        if names.invalid != nil, let refusal = reporting.judgeUnreadableServerName(&metadata, reason: PolicyCheck.unjudgedHostReason) {
            return refusal
        }
        let known = besides?.lowercased()
        for host in names.all where known.map({ !InterceptedConnection.namesSameHost(host, $0) }) ?? true {
            if metadata.requestHost == nil { metadata.requestHost = Reporting.printable(host) }
            if let refusal = reporting.judge(&metadata, host: host, address: metadata.resolvedIP) { return refusal }
        }
        return nil
    }

    /// A transparent connection's name against the policy: the name's own rules always (a blocklist entry for it
    /// holds whoever sent it); a name that does not resolve to the address counts for nothing more, so the
    /// address alone must pass (a client cannot reach any address by naming an allowed host).
    private func judgeTransparent(name: String?, belongs: Bool) {
        guard !recorded else { return }
        var refusal = reporting.judge(&metadata, host: name, address: metadata.resolvedIP)
        if refusal == nil, name != nil, !belongs {
            refusal = reporting.judge(&metadata, host: nil, address: metadata.resolvedIP)
        }
        if let refusal {
            refuse(byPolicy: refusal)
            return
        }
        allow()
    }

    private func allow() {
        // The tunnel's action first: a later request the held bytes carry may be refused, with an action of its own.
        sendActionOnce()
        if holdsClientBytes {
            holdsClientBytes = false
            releaseClientBytes?()
        }
    }

    private func rename(to name: String) {
        metadata.host = name
        target = Destination(host: name, port: metadata.port, isIPLiteral: OpenSSLConnection.isIPAddress(name)).description
    }

    /// Enforce mode: the name the client sent (SNI or Host) is blocked by a policy. The tunnel is closed; what
    /// the client sent was held, so none of it reached the destination.
    private func refuse(byPolicy policy: String) {
        noteClose(by: .proxy, reason: "blocked_by_policy")
        // The destination was dialled but never reached: nothing the client sent went to it.
        metadata.outcome = .failed
        metadata.error = Reporting.blockedByPolicy(policy)
        sendActionOnce()
        closeBoth?("blocked_by_policy")
    }

    func read(_ count: Int, from side: Side) {
        switch side {
        case .client: bytesFromClient &+= UInt64(count)
        case .upstream: bytesToClient &+= UInt64(count)
        }
        lastActivity = .now()
    }

    /// The first side to stop (EOF, error, or the proxy) is the one recorded as closing the tunnel.
    func noteClose(by who: CloseRecord.ClosedBy, reason: String) {
        guard closedBy == nil else { return }
        closedBy = who
        closeReason = reason
    }

    func channelInactive(_ side: Side) {
        inactiveSides.insert(side)
        noteClose(by: side == .client ? .client : .upstream, reason: "eof")
        if inactiveSides.count == 2 {
            finish()
        }
    }

    private func finish() {
        guard !recorded else { return }
        recorded = true
        if counted { reporting.metrics?.tunnelClosed(inspected: false) }
        idleTimer?.cancel()
        idleTimer = nil
        sendActionOnce()
        let now = NIODeadline.now()
        let body = CloseRecord.Body(
            eventID: metadata.eventID,
            target: target,
            bytesFromClient: bytesFromClient,
            bytesToClient: bytesToClient,
            durationMs: milliseconds(from: started, to: now),
            closedBy: closedBy ?? .proxy,
            reason: closeReason ?? "eof",
            endedAt: WallClock.rfc3339(unixMillis: WallClock.nowMillis())
        )
        reporting.close(body)
        reporting.logConnection(metadata, target: target, mode: "passthrough", close: body)
    }

    private func sendActionOnce() {
        guard !actionSent else { return }
        actionSent = true
        if metadata.tls == nil && metadata.sniError == nil {
            metadata.tls = false
            metadata.sniError = "tunnel ended before the client sent anything"
        }
        reporting.action(target: target, metadata: metadata)
    }

    private func scheduleIdleCheck(in delay: TimeAmount) {
        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        idleTimer = eventLoop.scheduleTask(in: delay) {
            loopBound.value.idleCheck()
        }
    }

    private func idleCheck() {
        guard !recorded else { return }
        let idle = NIODeadline.now() - lastActivity
        if idle >= idleTimeout {
            noteClose(by: .proxy, reason: "idle_timeout")
            closeBoth?("idle_timeout")
        } else {
            scheduleIdleCheck(in: idleTimeout - idle)
        }
    }
}

@available(*, unavailable)
extension TunnelSession: Sendable {}

import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import OpenSSLTLS
import Telemetry

/// Idle upstream connections of inspection, each verified and speaking HTTP/1.1, kept a short while for the next
/// inspected connection of the same agent to the same destination: that one then skips the TCP and TLS handshakes
/// with the upstream, as a browser reuses its connections. A connection is kept only when the client's side ended
/// while the upstream's was idle and fit for another request (`InterceptedConnection.releaseUpstream`).
///
/// What a kept connection may be taken for is its key: the agent, the destination (CONNECT host and port, and the
/// address the connection goes to, so the address reported and judged is the one the bytes reach), the name its
/// certificate was verified for (also its SNI), and the client's ALPN offer as relayed. It is taken at most
/// `idleTimeout` after it was kept, never past `maxAge` after the handshake that authenticated the upstream nor past
/// the earliest notAfter of the certificates the upstream sent then, and only on its own event loop (an inspected
/// connection's two channels share one). Closed while kept (by the upstream, or bytes it did not ask for), it leaves.
final class UpstreamPool: Sendable {
    struct Key: Hashable, Sendable {
        var agent: String
        var host: String
        var port: Int
        var address: String
        var serverName: String
        var alpnOffer: [String]

        var destination: Destination { Destination(agent: agent, host: host, port: port) }
    }

    /// What a CONNECT knows before its ClientHello: the agent and the destination it asked for.
    struct Destination: Hashable, Sendable {
        var agent: String
        var host: String
        var port: Int
    }

    /// A kept connection, and what it brings to the inspected connection that takes it.
    struct Idle: Sendable {
        let channel: any Channel
        /// The protocol the upstream chose (ALPN), nil for none; the client is answered with it.
        let negotiatedProtocol: String?
        /// The handshake that opened it resumed a session.
        let resumed: Bool
        /// The event ID of the inspected connection whose handshake opened and verified it.
        let openedBy: String
        /// Unix seconds after which it is not taken.
        let reuseUntil: Int64
        /// The order in which connections were (last) kept: the newest is reserved first.
        fileprivate(set) var keptOrder: UInt64 = 0
    }

    /// How long a connection is kept unused; zero turns reuse off.
    let idleTimeout: TimeAmount
    let perKey: Int
    let capacity: Int
    /// Seconds after the upstream's authentication a connection is no longer taken.
    let maxAge: Int64
    /// The time (Unix seconds); tests set it.
    let clock: @Sendable () -> Int64
    /// `kaizen_egress_upstream_idle_connections` follows the count.
    private let metrics: ProxyMetrics?

    private struct State {
        /// By destination (what a CONNECT can look up), then by key; each list oldest first.
        var idle: [Destination: [Key: [Idle]]] = [:]
        var total = 0
        var kept: UInt64 = 0

        /// The connections kept under `key`, oldest first; setting none forgets the key (and an empty destination).
        subscript(key: Key) -> [Idle] {
            get { idle[key.destination]?[key] ?? [] }
            set {
                let destination = key.destination
                if !newValue.isEmpty {
                    idle[destination, default: [:]][key] = newValue
                } else if idle[destination]?.removeValue(forKey: key) != nil, idle[destination]?.isEmpty == true {
                    idle[destination] = nil
                }
            }
        }

        /// - Parameter restored: a reservation coming back keeps its place in the order (it is no newer).
        mutating func append(_ idle: Idle, key: Key, restored: Bool = false) {
            var idle = idle
            if !restored {
                kept += 1
                idle.keptOrder = kept
            }
            var list = self[key]
            list.insert(idle, at: list.lastIndex { $0.keptOrder <= idle.keptOrder }.map { $0 + 1 } ?? 0)
            self[key] = list
            total += 1
        }
    }

    private let state = NIOLockedValueBox(State())

    init(
        idleTimeout: TimeAmount, perKey: Int = 32, capacity: Int = 256, maxAge: Int64 = 600, metrics: ProxyMetrics? = nil,
        clock: @escaping @Sendable () -> Int64 = { Inspection.now() }
    ) {
        self.metrics = metrics
        self.idleTimeout = idleTimeout
        self.perKey = perKey
        self.capacity = capacity
        self.maxAge = maxAge
        self.clock = clock
    }

    var isEnabled: Bool { idleTimeout > .zero }

    /// Unix seconds until which a connection whose upstream was authenticated at `at`, with certificates valid until
    /// `notAfter`, may be taken.
    func reuseUntil(authenticatedAt at: Int64, notAfter: Int64) -> Int64 { min(at + maxAge, notAfter) }

    /// Connections kept now, all keys together.
    var count: Int { state.withLockedValue { $0.total } }

    /// Changes the state, and the gauge with it (by the change: an old pool and a new one, after a reload, both add
    /// theirs).
    private func mutate<Result>(_ body: (inout State) -> Result) -> Result {
        state.withLockedValue { state in
            let before = state.total
            let result = body(&state)
            if state.total != before { metrics?.idleUpstreamsChanged(by: state.total - before) }
            return result
        }
    }

    /// The newest connection kept under `key` on the calling event loop, no longer kept; nil when there is none.
    /// Its two `IdleUpstreamHandler`s are still in its pipeline: the taker removes them (`IdleUpstreamHandler.remove`).
    func take(_ key: Key, on eventLoop: any EventLoop) -> Idle? {
        eventLoop.preconditionInEventLoop()
        let now = clock()
        var stale: [any Channel] = []
        let found = mutate { state -> Idle? in
            var list = state[key]
            var found: Idle?
            var index = list.count
            while found == nil && index > 0 {
                index -= 1
                let candidate = list[index]
                guard candidate.channel.eventLoop.inEventLoop else { continue }
                list.remove(at: index)
                state.total -= 1
                if candidate.reuseUntil > now && candidate.channel.isActive {
                    found = candidate
                } else {
                    stale.append(candidate.channel)
                }
            }
            state[key] = list
            return found
        }
        for channel in stale { channel.close(promise: nil) }
        return found
    }

    /// A kept connection taken for a CONNECT before its ClientHello is in, so the CONNECT needs no dial: it serves
    /// that connection if the key its ClientHello makes is this one, else it goes back (`restore`).
    struct Reservation: Sendable {
        let pool: UpstreamPool
        let key: Key
        let idle: Idle

        /// Puts it back in its pool (`UpstreamPool.restore`).
        func restore() { pool.restore(self) }
    }

    /// The newest connection kept on the calling event loop for `agent` to `host`:`port`, whatever its address,
    /// name or ALPN offer (one verified for `host` itself first), no longer kept; nil when there is none. Its
    /// watchers stay, and its idle time runs on, until it is used or restored.
    func reserve(agent: String, host: String, port: Int, on eventLoop: any EventLoop) -> Reservation? {
        eventLoop.preconditionInEventLoop()
        let now = clock()
        return mutate { state -> Reservation? in
            var best: (key: Key, index: Int, order: UInt64)?
            for (key, list) in state.idle[Destination(agent: agent, host: host, port: port)] ?? [:] {
                guard let index = list.lastIndex(where: { $0.channel.eventLoop.inEventLoop && $0.reuseUntil > now })
                else { continue }
                let candidate = (key: key, index: index, order: list[index].keptOrder)
                guard let chosen = best else {
                    best = candidate
                    continue
                }
                let ownName = key.serverName.lowercased() == host
                let chosenOwnName = chosen.key.serverName.lowercased() == host
                if (ownName && !chosenOwnName) || (ownName == chosenOwnName && candidate.order > chosen.order) {
                    best = candidate
                }
            }
            guard let best else { return nil }
            let idle = state[best.key].remove(at: best.index)
            state.total -= 1
            return Reservation(pool: self, key: best.key, idle: idle)
        }
    }

    /// A reservation that was not used goes back as it was (its idle time runs on), unless it closed meanwhile, its
    /// time is up or there is no room: then it is closed.
    func restore(_ reservation: Reservation) {
        let channel = reservation.idle.channel
        channel.eventLoop.preconditionInEventLoop()
        let watched = (try? channel.pipeline.syncOperations.handler(type: IdleUpstreamHandler.self)) != nil
        let kept = watched && channel.isActive && reservation.idle.reuseUntil > clock()
            && mutate { state -> Bool in
                guard state.total < capacity, state[reservation.key].count < perKey else { return false }
                state.append(reservation.idle, key: reservation.key, restored: true)
                return true
            }
        if !kept { channel.close(promise: nil) }
    }

    /// Keeps `idle` (on its event loop) for up to `idleTimeout`, watched by two `IdleUpstreamHandler`s: one right
    /// after the first handler (its TLS: any byte the upstream sends), one last (anything else that reaches the end
    /// of the pipeline, or an error). False when it is not kept (reuse off, its time is up, or the pool is full for
    /// its key or in all): the caller closes it.
    ///
    /// Only a connection whose HTTP handler had nothing past its last response comes here
    /// (`InterceptedUpstreamHandler.isBetweenResponses`): the start of a response sent past the end of the last one
    /// (a wrong Content-Length, a body on a 204) never reaches the next client connection as its response.
    func keep(_ idle: Idle, key: Key) -> Bool {
        idle.channel.eventLoop.preconditionInEventLoop()
        guard isEnabled, idle.reuseUntil > clock(), idle.channel.isActive else { return false }
        guard state.withLockedValue({ $0.total < capacity && $0[key].count < perKey }) else { return false }
        let pipeline = idle.channel.pipeline.syncOperations
        do {
            // After the TLS, not before it: a session ticket the upstream sends meanwhile is no reason to close.
            let watcher = IdleUpstreamHandler(pool: self, timed: true)
            if let tls = try? pipeline.handler(type: OpenSSLTLSHandler.self) {
                try pipeline.addHandler(watcher, position: .after(tls))
            } else {
                try pipeline.addHandler(watcher, position: .first)
            }
            try pipeline.addHandler(IdleUpstreamHandler(pool: self, timed: false), position: .last)
        } catch {
            return false
        }
        offer(idle, key: key)
        return true
    }

    /// Makes `idle` one a later connection may take, room permitting (else it is closed).
    private func offer(_ idle: Idle, key: Key) {
        let offered = mutate { state -> Bool in
            guard state.total < capacity, state[key].count < perKey else { return false }
            state.append(idle, key: key)
            return true
        }
        if !offered { idle.channel.close(promise: nil) }
    }

    /// Forgets `channel` (closed, or closing).
    func remove(_ channel: any Channel) {
        mutate { state in
            for keys in state.idle.values {
                for (key, list) in keys {
                    guard let index = list.firstIndex(where: { $0.channel === channel }) else { continue }
                    state[key].remove(at: index)
                    state.total -= 1
                    return
                }
            }
        }
    }
}

/// In a kept upstream connection's pipeline while it is idle (two of them, see `UpstreamPool.keep`): closes it when
/// its idle time is up, and when the upstream sends anything (no request is outstanding, so it is nothing anyone
/// asked for), errs or closes; either way it leaves the pool.
final class IdleUpstreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    /// Whatever reaches it: bytes (after the TLS) or HTTP parts (last); never unwrapped.
    typealias InboundIn = Any

    private let pool: UpstreamPool
    /// This one closes the connection when its idle time is up.
    private let timed: Bool
    private var timer: Scheduled<Void>?

    init(pool: UpstreamPool, timed: Bool) {
        self.pool = pool
        self.timed = timed
    }

    /// Takes both out of `channel`'s pipeline (a connection taken from the pool).
    static func remove(from channel: any Channel) {
        let pipeline = channel.pipeline.syncOperations
        for _ in 0..<2 {
            guard let handler = try? pipeline.handler(type: IdleUpstreamHandler.self) else { return }
            pipeline.removeHandler(handler, promise: nil)
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        guard timed else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: pool.idleTimeout) {
            let (handler, context) = loopBound.value
            handler.discard(context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        discard(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        discard(context: context)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        discard(context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        pool.remove(context.channel)
        timer?.cancel()
        context.fireChannelInactive()
    }

    private func discard(context: ChannelHandlerContext) {
        pool.remove(context.channel)
        timer?.cancel()
        timer = nil
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension IdleUpstreamHandler: Sendable {}

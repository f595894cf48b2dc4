public import NIOCore
public import OpenSSLTLS
import Synchronization
public import Telemetry

/// Leaf certificates minted from the customer's CA, by name: a bounded LRU (entries and bytes) with
/// single-flight minting, so a burst of connections to a new name mints once and the rest wait for it.
/// A leaf is minted again once two thirds of its validity have passed, so none in use expires.
///
/// One leaf key (ECDSA P-256) serves every leaf of the process.
public final class LeafCache: Sendable {
    public struct Limits: Sendable {
        public var entries: Int
        public var bytes: Int
        public init(entries: Int = 10_000, bytes: Int = 64 << 20) {
            self.entries = entries
            self.bytes = bytes
        }
    }

    private struct Entry {
        var leaf: OpenSSLCertifiedKey
        var bytes: Int
        var renewAt: Int64
        var lastUse: UInt64
    }

    private enum Slot {
        case ready(Entry)
        case minting([EventLoopPromise<OpenSSLCertifiedKey>])
    }

    private struct State {
        var slots: [OpenSSLCertificateAuthority.LeafName: Slot] = [:]
        var readyCount = 0
        var bytes = 0
        var tick: UInt64 = 0
        var mints = 0
    }

    private let authority: OpenSSLCertificateAuthority
    private let leafKey: OpenSSLPrivateKey
    private let limits: Limits
    private let now: @Sendable () -> Int64
    private let state = Mutex(State())
    private let metrics: ProxyMetrics?

    public init(
        authority: OpenSSLCertificateAuthority,
        leafKey: OpenSSLPrivateKey,
        limits: Limits = Limits(),
        metrics: ProxyMetrics? = nil,
        now: @escaping @Sendable () -> Int64
    ) {
        self.authority = authority
        self.leafKey = leafKey
        self.limits = limits
        self.metrics = metrics
        self.now = now
    }

    /// Whether a leaf for `name` is cached and not due for renewal.
    public func isCached(_ name: OpenSSLCertificateAuthority.LeafName) -> Bool {
        let now = self.now()
        return state.withLock { state in
            if case .ready(let entry) = state.slots[name] { return entry.renewAt > now }
            return false
        }
    }

    /// How many leaves have been minted (for tests and metrics).
    public var mintCount: Int { state.withLock { $0.mints } }
    public var count: Int { state.withLock { $0.readyCount } }

    /// The leaf for `name`: from the cache, or minted now (on the calling thread) and cached; callers that
    /// ask while it is being minted get the same leaf when it is ready.
    public func leaf(
        for name: OpenSSLCertificateAuthority.LeafName,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<OpenSSLCertifiedKey> {
        guard let future = leaf(for: name, on: eventLoop, ahead: false) else {
            preconditionFailure("a lookup that is not ahead always answers")
        }
        return future
    }

    /// Mints the leaf for `name` now (on the calling thread) unless it is cached or being minted, before any
    /// connection asks for it (while a CONNECT's host is resolved, its connection has nothing else to wait for).
    /// Counted as a mint, not as a lookup; a name that cannot be minted is left for the connection to find out.
    public func mintAhead(for name: OpenSSLCertificateAuthority.LeafName, on eventLoop: any EventLoop) {
        _ = leaf(for: name, on: eventLoop, ahead: true)
    }

    /// - Parameter ahead: `mintAhead`: no lookup counted, no failure counted, nothing returned but for a mint.
    private func leaf(
        for name: OpenSSLCertificateAuthority.LeafName,
        on eventLoop: any EventLoop,
        ahead: Bool
    ) -> EventLoopFuture<OpenSSLCertifiedKey>? {
        let now = self.now()
        enum Decision {
            case hit(OpenSSLCertifiedKey)
            case wait(EventLoopFuture<OpenSSLCertifiedKey>?)
            case mint
        }
        let decision = state.withLock { state -> Decision in
            state.tick += 1
            switch state.slots[name] {
            case .ready(let entry) where ahead && entry.renewAt > now:
                return .wait(nil)
            case .ready(var entry) where entry.renewAt > now:
                entry.lastUse = state.tick
                state.slots[name] = .ready(entry)
                return .hit(entry.leaf)
            case .minting where ahead:
                return .wait(nil)
            case .minting(var waiters):
                let promise = eventLoop.makePromise(of: OpenSSLCertifiedKey.self)
                waiters.append(promise)
                state.slots[name] = .minting(waiters)
                return .wait(promise.futureResult)
            case .ready(let stale):
                state.readyCount -= 1
                state.bytes -= stale.bytes
                state.slots[name] = .minting([])
                return .mint
            case nil:
                state.slots[name] = .minting([])
                return .mint
            }
        }
        switch decision {
        case .hit(let leaf):
            metrics?.leafLookup(hit: true)
            return eventLoop.makeSucceededFuture(leaf)
        case .wait(let future):
            if ahead { return nil }
            metrics?.leafLookup(hit: true)
            return future
        case .mint:
            if !ahead { metrics?.leafLookup(hit: false) }
        }
        let result: Result<OpenSSLCertifiedKey, any Error>
        let started = ContinuousClock.now
        do {
            result = .success(try authority.mintLeaf(for: name, key: leafKey, now: now))
        } catch {
            result = .failure(error)
            if !ahead { metrics?.leafMintFailed() }
        }
        metrics?.leafMinted(since: started)
        let waiters = state.withLock { state -> [EventLoopPromise<OpenSSLCertifiedKey>] in
            guard case .minting(let waiters) = state.slots[name] else { return [] }
            state.mints += 1
            switch result {
            case .success(let leaf):
                let certificate = leaf.leaf
                let bytes = certificate.derBytes.count + 2048  // the DER plus OpenSSL's parsed structures
                let renewAt = certificate.notBefore + (certificate.notAfter - certificate.notBefore) * 2 / 3
                state.slots[name] = .ready(Entry(leaf: leaf, bytes: bytes, renewAt: renewAt, lastUse: state.tick))
                state.readyCount += 1
                state.bytes += bytes
                Self.evict(&state, limits: limits)
            case .failure:
                state.slots[name] = nil
            }
            return waiters
        }
        for waiter in waiters { waiter.completeWith(result) }
        return eventLoop.makeCompletedFuture(result)
    }

    /// Drops the least recently used leaves, a tenth of the limit at a time, until both limits hold.
    private static func evict(_ state: inout State, limits: Limits) {
        guard state.readyCount > limits.entries || state.bytes > limits.bytes else { return }
        var ready: [(OpenSSLCertificateAuthority.LeafName, UInt64, Int)] = []
        for (name, slot) in state.slots {
            if case .ready(let entry) = slot { ready.append((name, entry.lastUse, entry.bytes)) }
        }
        ready.sort { $0.1 < $1.1 }
        let targetEntries = limits.entries - max(1, limits.entries / 10)
        let targetBytes = limits.bytes - max(1, limits.bytes / 10)
        for (name, _, bytes) in ready where state.readyCount > targetEntries || state.bytes > targetBytes {
            state.slots[name] = nil
            state.readyCount -= 1
            state.bytes -= bytes
        }
    }
}

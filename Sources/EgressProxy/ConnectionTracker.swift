import NIOConcurrencyHelpers
import NIOCore

/// The client connections that are open, so shutdown can ask them to finish, wait for them, and close the
/// ones that outlast the drain period.
final class ConnectionTracker: Sendable {
    private struct State {
        var channels: [ObjectIdentifier: any Channel] = [:]
        var perClient: [String: Int] = [:]
        var waiters: [Int: CheckedContinuation<Bool, Never>] = [:]
        var nextWaiter = 0
    }

    /// Why a connection was not admitted.
    enum Refusal: Equatable {
        case total(Int)
        case perClient(Int)
    }

    private let state = NIOLockedValueBox(State())
    /// Open connections allowed in all, and from one client address (zero: no limit).
    let maxConnections: Int
    let maxPerClient: Int

    init(maxConnections: Int = 0, maxPerClient: Int = 0) {
        self.maxConnections = maxConnections
        self.maxPerClient = maxPerClient
    }

    var count: Int { state.withLockedValue { $0.channels.count } }

    /// Tracks `channel` unless that would pass a limit.
    func add(_ channel: any Channel) -> Refusal? {
        let id = ObjectIdentifier(channel)
        let client = channel.remoteAddress?.ipAddress ?? "unknown"
        let refusal: Refusal? = state.withLockedValue { state in
            if maxConnections > 0, state.channels.count >= maxConnections { return .total(maxConnections) }
            if maxPerClient > 0, state.perClient[client, default: 0] >= maxPerClient { return .perClient(maxPerClient) }
            state.channels[id] = channel
            state.perClient[client, default: 0] += 1
            return nil
        }
        if refusal != nil { return refusal }
        channel.closeFuture.whenComplete { [self] _ in
            let waiters: [CheckedContinuation<Bool, Never>] = state.withLockedValue { state in
                state.channels[id] = nil
                if let open = state.perClient[client], open > 1 {
                    state.perClient[client] = open - 1
                } else {
                    state.perClient[client] = nil
                }
                guard state.channels.isEmpty else { return [] }
                defer { state.waiters = [:] }
                return Array(state.waiters.values)
            }
            for waiter in waiters { waiter.resume(returning: true) }
        }
        return nil
    }

    /// Sends `event` down every open connection's pipeline.
    func fireEvent(_ event: some Sendable) {
        let channels = state.withLockedValue { Array($0.channels.values) }
        for channel in channels {
            channel.pipeline.fireUserInboundEventTriggered(event)
        }
    }

    /// `true` once no connection is open, `false` if `timeout` passes first.
    func waitUntilEmpty(timeout: Duration) async -> Bool {
        let id: Int? = state.withLockedValue { state in
            guard !state.channels.isEmpty else { return nil }
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        guard let id else { return true }
        return await withTaskGroup(of: Bool?.self) { group in
            group.addTask {
                await withCheckedContinuation { continuation in
                    let resumeNow = self.state.withLockedValue { state -> Bool in
                        if state.channels.isEmpty { return true }
                        state.waiters[id] = continuation
                        return false
                    }
                    if resumeNow { continuation.resume(returning: true) }
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            if first == nil {
                // Timed out: release the waiter so the group can finish.
                let waiter = self.state.withLockedValue { $0.waiters.removeValue(forKey: id) }
                waiter?.resume(returning: false)
            }
            group.cancelAll()
            return first ?? false
        }
    }
}

import NIOConcurrencyHelpers
import NIOCore

/// The client connections that are open, so shutdown can ask them to finish, wait for them, and close the
/// ones that outlast the drain period.
final class ConnectionTracker: Sendable {
    private struct State {
        var channels: [ObjectIdentifier: any Channel] = [:]
        var waiters: [Int: CheckedContinuation<Bool, Never>] = [:]
        var nextWaiter = 0
    }

    private let state = NIOLockedValueBox(State())

    var count: Int { state.withLockedValue { $0.channels.count } }

    func add(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        state.withLockedValue { $0.channels[id] = channel }
        channel.closeFuture.whenComplete { [self] _ in
            let waiters: [CheckedContinuation<Bool, Never>] = state.withLockedValue { state in
                state.channels[id] = nil
                guard state.channels.isEmpty else { return [] }
                defer { state.waiters = [:] }
                return Array(state.waiters.values)
            }
            for waiter in waiters { waiter.resume(returning: true) }
        }
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

import Synchronization

/// A queue that event loops append to without waiting and one consumer task takes whole, waking it only when
/// it is asleep. Bounded: past `limit` items, appends are refused and counted, never blocked.
package final class BatchQueue<Element: Sendable>: Sendable {
    private struct State {
        var items: [Element] = []
        var waiter: CheckedContinuation<Void, Never>?
        var finished = false
        var dropped = 0
        /// A `wake()` that found no consumer waiting: the next wait returns at once.
        var wakePending = false
    }

    private let state = Mutex(State())
    private let limit: Int

    package init(limit: Int) {
        self.limit = limit
    }

    /// Adds `item`; `false` when the queue is full or finished (the item is counted as dropped).
    @discardableResult
    package func append(_ item: Element) -> Bool {
        let (accepted, waiter) = state.withLock { state -> (Bool, CheckedContinuation<Void, Never>?) in
            guard !state.finished, state.items.count < limit else {
                state.dropped += 1
                return (false, nil)
            }
            state.items.append(item)
            defer { state.waiter = nil }
            return (true, state.waiter)
        }
        waiter?.resume()
        return accepted
    }

    /// Everything queued, and how many items were refused since the last call. The next batch starts with room
    /// for as many as this one had, so appends under load do not regrow (and copy) the array several times over.
    package func takeAll() -> (items: [Element], dropped: Int) {
        state.withLock { state in
            let taken = (state.items, state.dropped)
            state.items = []
            state.items.reserveCapacity(min(taken.0.count, limit))
            state.dropped = 0
            return taken
        }
    }

    /// Returns once there is something to take, or the queue is finished.
    package func waitForItems() async {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> Bool in
                if !state.items.isEmpty || state.finished || state.wakePending {
                    state.wakePending = false
                    return true
                }
                state.waiter = continuation
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Refuses further items and wakes the consumer; what is queued can still be taken.
    package func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Wakes a waiting consumer although nothing was added (a timer: time to sync what was written).
    package func wake() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            defer { state.waiter = nil }
            if state.waiter == nil { state.wakePending = true }
            return state.waiter
        }
        waiter?.resume()
    }

    package var isFinished: Bool { state.withLock { $0.finished } }
    package var count: Int { state.withLock { $0.items.count } }
}

import ControlPlane
import NIOConcurrencyHelpers
import TestSupport

/// Collects every record the proxy emits; tests wait, with a deadline, for the one they expect.
final class RecordingSink: ActionSink {
    private struct Waiter {
        var predicate: @Sendable (ActionRecord) -> Bool
        var continuation: CheckedContinuation<ActionRecord?, Never>
    }

    private struct State {
        var records: [ActionRecord] = []
        var waiters: [Int: Waiter] = [:]
        var nextID = 0
    }

    private let state = NIOLockedValueBox(State())

    var records: [ActionRecord] { state.withLockedValue { $0.records } }

    var actions: [ConnectAction] {
        records.compactMap { if case .action(let action) = $0 { action } else { nil } }
    }

    var closes: [CloseRecord] {
        records.compactMap { if case .close(let close) = $0 { close } else { nil } }
    }

    func record(_ record: ActionRecord) {
        let ready: [CheckedContinuation<ActionRecord?, Never>] = state.withLockedValue { state in
            state.records.append(record)
            let matched = state.waiters.filter { $0.value.predicate(record) }
            for id in matched.keys { state.waiters[id] = nil }
            return matched.values.map(\.continuation)
        }
        for continuation in ready { continuation.resume(returning: record) }
    }

    /// The first record matching `predicate`, already recorded or arriving within `timeout`.
    func waitFor(
        timeout: Duration = .seconds(15),
        _ predicate: @escaping @Sendable (ActionRecord) -> Bool
    ) async throws -> ActionRecord {
        let id = state.withLockedValue { state -> Int in
            defer { state.nextID += 1 }
            return state.nextID
        }
        let found: ActionRecord? = await withTaskGroup(of: ActionRecord?.self) { group in
            group.addTask {
                await withCheckedContinuation { continuation in
                    let existing = self.state.withLockedValue { state -> ActionRecord? in
                        if let match = state.records.first(where: predicate) { return match }
                        state.waiters[id] = Waiter(predicate: predicate, continuation: continuation)
                        return nil
                    }
                    if let existing { continuation.resume(returning: existing) }
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            if first == nil {
                let waiter = self.state.withLockedValue { $0.waiters.removeValue(forKey: id) }
                waiter?.continuation.resume(returning: nil)
            }
            group.cancelAll()
            return first
        }
        guard let found else { throw TestFailure("no matching record within \(timeout); got \(records)") }
        return found
    }

    func action(target: String, timeout: Duration = .seconds(15)) async throws -> ConnectAction {
        let record = try await waitFor(timeout: timeout) {
            if case .action(let action) = $0 { return action.action.target == target }
            return false
        }
        guard case .action(let action) = record else { throw TestFailure("not an action") }
        return action
    }

    func close(eventID: EventID, timeout: Duration = .seconds(15)) async throws -> CloseRecord {
        let record = try await waitFor(timeout: timeout) {
            if case .close(let close) = $0 { return close.close.eventID == eventID }
            return false
        }
        guard case .close(let close) = record else { throw TestFailure("not a close record") }
        return close
    }
}

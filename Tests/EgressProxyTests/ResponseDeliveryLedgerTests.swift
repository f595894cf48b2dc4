@testable import EgressProxy
import Testing

@Suite struct ResponseDeliveryLedgerTests {
    typealias Ledger = ResponseDeliveryLedger<String>

    /// `write` completed; the reports it let go.
    func complete(_ ledger: inout Ledger, _ write: Ledger.Write, written: Bool = true) -> [Ledger.Ready] {
        ledger.completed(write, written: written)
        var ready: [Ledger.Ready] = []
        while let one = ledger.nextReady() { ready.append(one) }
        return ready
    }

    func drain(_ ledger: inout Ledger, overdue: Bool) -> [Ledger.Ready] {
        var ready: [Ledger.Ready] = []
        while let one = ledger.nextWaiting(overdue: overdue) { ready.append(one) }
        return ready
    }

    @Test func aResponseWrittenWholeIsReportedWhenItsEndsWriteCompletes() {
        var ledger = Ledger()
        ledger.handed(300)  // head and body: no promise of their own
        let end = ledger.track(serial: 1, endsResponse: true)
        #expect(end.bytes == 300)
        guard case .wait(let startTimer) = ledger.queue("GET /a", serial: 1) else {
            Issue.record("reported before its writes completed")
            return
        }
        #expect(startTimer)
        let ready = complete(&ledger, end)
        #expect(ready.map(\.report) == ["GET /a"])
        #expect(ready.first?.bodyBytes == 300 && ready.first?.endWritten == true && ready.first?.overdue == false)
        #expect(ledger.waitingCount == 0)
    }

    @Test func nothingOutstandingReportsAtOnce() {
        var ledger = Ledger()
        let end = ledger.track(serial: 1, endsResponse: true)
        #expect(complete(&ledger, end).isEmpty)
        guard case .reportNow(let ready) = ledger.queue("GET /a", serial: 1) else {
            Issue.record("waited with nothing outstanding")
            return
        }
        #expect(ready.endWritten)
    }

    @Test func aStreamedBodyCountsEachFlushThatWasWrittenAndNotTheRest() {
        var ledger = Ledger()
        ledger.handed(16_384)
        ledger.handed(16_384)
        let first = ledger.track(serial: 1, endsResponse: false)  // a flush
        ledger.handed(16_384)
        let second = ledger.track(serial: 1, endsResponse: false)
        ledger.handed(100)
        let end = ledger.track(serial: 1, endsResponse: true)
        #expect([first.bytes, second.bytes, end.bytes] == [32_768, 16_384, 100])
        _ = ledger.queue("GET /big", serial: 1)
        #expect(complete(&ledger, first).isEmpty)
        // The client left: the rest failed.
        #expect(complete(&ledger, second, written: false).isEmpty)
        let ready = complete(&ledger, end, written: false)
        #expect(ready.first?.bodyBytes == 32_768 && ready.first?.endWritten == false)
    }

    @Test func reportsLeaveInTheOrderTheyCameAndNeverTwice() {
        var ledger = Ledger()
        ledger.handed(10)
        let one = ledger.track(serial: 1, endsResponse: true)
        _ = ledger.queue("first", serial: 1)
        ledger.handed(20)
        let two = ledger.track(serial: 2, endsResponse: true)
        guard case .wait(let startTimer) = ledger.queue("second", serial: 2) else {
            Issue.record("the second went before the first")
            return
        }
        #expect(!startTimer)  // the first's timer runs
        #expect(complete(&ledger, one).map(\.report) == ["first"])
        let ready = complete(&ledger, two)
        #expect(ready.map(\.report) == ["second"] && ready.first?.bodyBytes == 20)
        #expect(drain(&ledger, overdue: false).isEmpty)
        #expect(drain(&ledger, overdue: true).isEmpty)
    }

    @Test func aClientThatStopsReadingHasItsReportOverdueAndLaterBytesCountInNoExchange() {
        var ledger = Ledger()
        ledger.handed(2_000_000)
        let flush = ledger.track(serial: 1, endsResponse: false)
        ledger.handed(600_000)
        let end = ledger.track(serial: 1, endsResponse: true)
        _ = ledger.queue("GET /big", serial: 1)
        #expect(complete(&ledger, flush).isEmpty)
        let ready = drain(&ledger, overdue: true)
        #expect(ready.map(\.report) == ["GET /big"])
        #expect(ready.first?.overdue == true && ready.first?.bodyBytes == 2_000_000 && ready.first?.endWritten == false)
        // The client reads on later: nothing is reported again, and the next exchange starts from nothing.
        #expect(complete(&ledger, end).isEmpty)
        #expect(ledger.keptDeliveries == 0)  // kept for no report, on a connection that may live for hours
        ledger.handed(5)
        let next = ledger.track(serial: 2, endsResponse: true)
        _ = ledger.queue("GET /next", serial: 2)
        let after = complete(&ledger, next)
        #expect(after.map(\.report) == ["GET /next"] && after.first?.bodyBytes == 5 && after.first?.overdue == false)
    }

    @Test func aReportWhoseWritesCompletedInTimeIsNotOverdue() {
        var ledger = Ledger()
        let end = ledger.track(serial: 1, endsResponse: true)
        _ = ledger.queue("a", serial: 1)
        ledger.handed(1)
        _ = ledger.track(serial: 2, endsResponse: true)
        _ = ledger.queue("b", serial: 2)
        let completed = complete(&ledger, end)
        #expect(completed.map(\.report) == ["a"] && completed.first?.overdue == false)
        let ready = drain(&ledger, overdue: true)
        #expect(ready.map(\.report) == ["b"] && ready.first?.overdue == true)
    }

    @Test func aFinishedConnectionReportsEverythingWaitingThenTheNewOne() {
        var ledger = Ledger()
        ledger.handed(7)
        _ = ledger.track(serial: 1, endsResponse: true)
        _ = ledger.queue("waiting", serial: 1)
        var ready = drain(&ledger, overdue: false)
        ready.append(ledger.reportNow("cut", serial: 2))
        #expect(ready.map(\.report) == ["waiting", "cut"])
        #expect(ready.allSatisfy { !$0.overdue && $0.bodyBytes == 0 })
        #expect(ledger.waitingCount == 0)
    }
}

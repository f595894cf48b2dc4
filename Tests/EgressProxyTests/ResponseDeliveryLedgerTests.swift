@testable import EgressProxy
import Testing

@Suite struct ResponseDeliveryLedgerTests {
    typealias Ledger = ResponseDeliveryLedger<String>

    func names(_ ready: [Ledger.Ready]) -> [String] { ready.map(\.report) }

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
        let ready = ledger.completed(end, written: true)
        #expect(names(ready) == ["GET /a"])
        #expect(ready.first?.bodyBytes == 300 && ready.first?.endWritten == true && ready.first?.overdue == false)
        #expect(ledger.waitingCount == 0)
    }

    @Test func nothingOutstandingReportsAtOnce() {
        var ledger = Ledger()
        let end = ledger.track(serial: 1, endsResponse: true)
        _ = ledger.completed(end, written: true)
        guard case .reportNow(let ready) = ledger.queue("GET /a", serial: 1) else {
            Issue.record("waited with nothing outstanding")
            return
        }
        #expect(ready.first?.endWritten == true)
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
        #expect(ledger.completed(first, written: true).isEmpty)
        // The client left: the rest failed.
        #expect(ledger.completed(second, written: false).isEmpty)
        let ready = ledger.completed(end, written: false)
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
        #expect(names(ledger.completed(one, written: true)) == ["first"])
        let ready = ledger.completed(two, written: true)
        #expect(names(ready) == ["second"] && ready.first?.bodyBytes == 20)
        #expect(ledger.finish().isEmpty)
        #expect(ledger.overdue().isEmpty)
    }

    @Test func aClientThatStopsReadingHasItsReportOverdueAndLaterBytesCountInNoExchange() {
        var ledger = Ledger()
        ledger.handed(2_000_000)
        let flush = ledger.track(serial: 1, endsResponse: false)
        ledger.handed(600_000)
        let end = ledger.track(serial: 1, endsResponse: true)
        _ = ledger.queue("GET /big", serial: 1)
        #expect(ledger.completed(flush, written: true).isEmpty)
        let ready = ledger.overdue()
        #expect(names(ready) == ["GET /big"])
        #expect(ready.first?.overdue == true && ready.first?.bodyBytes == 2_000_000 && ready.first?.endWritten == false)
        // The client reads on later: nothing is reported again, and the next exchange starts from nothing.
        #expect(ledger.completed(end, written: true).isEmpty)
        ledger.handed(5)
        let next = ledger.track(serial: 2, endsResponse: true)
        _ = ledger.queue("GET /next", serial: 2)
        let after = ledger.completed(next, written: true)
        #expect(names(after) == ["GET /next"] && after.first?.bodyBytes == 5 && after.first?.overdue == false)
    }

    @Test func aReportWhoseWritesCompletedInTimeIsNotOverdue() {
        var ledger = Ledger()
        let end = ledger.track(serial: 1, endsResponse: true)
        _ = ledger.queue("a", serial: 1)
        ledger.handed(1)
        _ = ledger.track(serial: 2, endsResponse: true)
        _ = ledger.queue("b", serial: 2)
        #expect(names(ledger.completed(end, written: true)) == ["a"])
        let ready = ledger.overdue()
        #expect(names(ready) == ["b"] && ready.first?.overdue == true)
    }

    @Test func aFinishedConnectionReportsEverythingWaitingThenTheNewOne() {
        var ledger = Ledger()
        ledger.handed(7)
        _ = ledger.track(serial: 1, endsResponse: true)
        _ = ledger.queue("waiting", serial: 1)
        let ready = ledger.finished(with: "cut", serial: 2)
        #expect(names(ready) == ["waiting", "cut"])
        #expect(ready.allSatisfy { !$0.overdue && $0.bodyBytes == 0 })
        #expect(ledger.waitingCount == 0)
    }
}

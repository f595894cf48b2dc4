/// What an inspected HTTP/1.1 client was given of each response, and the exchange reports that wait for it.
///
/// A response's body bytes count once written to the client's connection, not when read from the upstream: a
/// client that leaves mid-body is reported with what it got. Writes complete in the order they were made, so not
/// every write needs a promise: bytes handed to the client (`handed`) are covered by the next tracked write
/// (`track`: the response end's write, and one per flush of a body streamed over several reads). An exchange's
/// report waits (`queue`) until the tracked writes made before it have completed (`completed`), in order; at most
/// until the connection finishes (`finish`) or the wait runs out (`overdue`: a client that stops reading must not
/// hold an action back, in memory only, until the connection's idle timeout). `InterceptedConnection` does the
/// writes, the timer and the reports; this type decides, and is tested without sockets.
struct ResponseDeliveryLedger<Report> {
    /// A tracked write: when it completes, `bytes` of exchange `serial`'s body (and its end, with `endsResponse`)
    /// were written.
    struct Write: Equatable {
        let sequence: Int
        let serial: Int
        let bytes: UInt64
        let endsResponse: Bool
    }

    /// A report whose time has come: the body bytes written to the client, whether the response's end was, and
    /// whether it is reported before its writes completed (`overdue`).
    struct Ready {
        let report: Report
        let bodyBytes: UInt64
        let endWritten: Bool
        let overdue: Bool
    }

    enum Queued {
        /// Nothing it waits for: reported now (none waits before it).
        case reportNow(Ready)
        /// It waits; `startTimer` when it is the first to wait (the wait's limit starts now).
        case wait(startTimer: Bool)
    }

    /// Body bytes handed to the client since the last tracked write.
    private(set) var untrackedBytes: UInt64 = 0
    private var tracked = 0
    private var completedUpTo = 0
    /// Per exchange not yet reported: its body bytes written, and whether its end was.
    private var deliveries: [(serial: Int, bytes: UInt64, ended: Bool)] = []
    private var waiting: [(after: Int, serial: Int, report: Report)] = []
    /// Exchanges up to this one were reported before their writes completed: what is written of them later counts
    /// in no exchange (the connection's byte count has it).
    private var reportedBefore = 0

    /// Reports waiting.
    var waitingCount: Int { waiting.count }
    /// Exchanges whose written bytes are kept for a report to come (bounded: each leaves with its report).
    var keptDeliveries: Int { deliveries.count }

    mutating func handed(_ bytes: Int) {
        untrackedBytes &+= UInt64(bytes)
    }

    /// A write about to be made with a promise, covering the bytes handed since the last one.
    mutating func track(serial: Int, endsResponse: Bool) -> Write {
        tracked += 1
        defer { untrackedBytes = 0 }
        return Write(sequence: tracked, serial: serial, bytes: untrackedBytes, endsResponse: endsResponse)
    }

    /// `write` completed: `written`, or failed (the connection closed first). The reports it let go follow from
    /// `nextReady` (no array per write: this runs once per response).
    mutating func completed(_ write: Write, written: Bool) {
        if written && write.serial > reportedBefore {
            if let index = deliveries.firstIndex(where: { $0.serial == write.serial }) {
                deliveries[index].bytes &+= write.bytes
                if write.endsResponse { deliveries[index].ended = true }
            } else {
                deliveries.append((write.serial, write.bytes, write.endsResponse))
            }
        }
        completedUpTo = max(completedUpTo, write.sequence)
    }

    /// The first waiting report whose writes have all completed, in order.
    mutating func nextReady() -> Ready? {
        guard let first = waiting.first, first.after <= completedUpTo else { return nil }
        waiting.removeFirst()
        return take(first.serial, first.report, overdue: false)
    }

    /// Exchange `serial`'s report, made once every write made so far has completed.
    mutating func queue(_ report: Report, serial: Int) -> Queued {
        guard waiting.isEmpty, completedUpTo >= tracked else {
            waiting.append((tracked, serial, report))
            return .wait(startTimer: waiting.count == 1)
        }
        return .reportNow(take(serial, report, overdue: false))
    }

    /// The first waiting report, whatever its writes: the connection finished (`overdue` false: reported with what
    /// was written), or the wait ran out (`overdue` true: it is overdue if its writes had not all completed, and
    /// what is written of it later counts in no exchange).
    mutating func nextWaiting(overdue: Bool) -> Ready? {
        guard let first = waiting.first else { return nil }
        waiting.removeFirst()
        let late = overdue && first.after > completedUpTo
        if late { reportedBefore = max(reportedBefore, first.serial) }
        return take(first.serial, first.report, overdue: late)
    }

    /// A report made after the connection finished (every waiting one reported first: `nextWaiting`).
    mutating func reportNow(_ report: Report, serial: Int) -> Ready {
        take(serial, report, overdue: false)
    }

    private mutating func take(_ serial: Int, _ report: Report, overdue: Bool) -> Ready {
        guard let index = deliveries.firstIndex(where: { $0.serial == serial }) else {
            return Ready(report: report, bodyBytes: 0, endWritten: false, overdue: overdue)
        }
        let delivery = deliveries.remove(at: index)
        return Ready(report: report, bodyBytes: delivery.bytes, endWritten: delivery.ended, overdue: overdue)
    }
}

/// What the reporter makes of one round of requests (a batch from the spool, pipelined over its connections):
/// which records are done, why the rest are not, and when to send again. Pure: no sockets, no clock.
///
/// Every answered request counts on its own. A control plane that closes the connection after an answer
/// (`Connection: close`, HTTP/1.0, a keep-alive limit) leaves the requests pipelined behind it unanswered: they
/// are sent again at once on a new connection, one at a time per connection until answers keep it open again.
///
/// Each record is done on its own: one the control plane keeps refusing never holds up those behind it. What each
/// answer means:
///
/// - 2xx: accepted.
/// - 400, 413, 422: the record itself is refused; sending it again cannot help. Set aside at once.
/// - Any other status but 429: retried. While the control plane accepts other records in the same round (so it is
///   up, and this record is what it chokes on), each counts against the record; after `failedAttempts` of them it is
///   set aside. A round in which nothing is accepted is an outage (or a refused key, a wrong URL): it counts against
///   no record, however long.
/// - No answer (the connection closed under the request, or the answer did not come in time): retried, and the round
///   after sends one request per connection. It counts against the record as an error answer does only when its
///   request was alone on its connection: pipelined, the request the control plane choked on may be any one before
///   it on that connection (answers come in order, so one that hangs or kills the connection leaves all those behind
///   it unanswered), and those innocent records must not be set aside for it. Sent alone in the next round, the one
///   that hangs is found, and the others go through on their own connections.
/// - 429: retried, never counted. 429 and 503 honour Retry-After.
package struct DeliveryRound: Sendable, Equatable {
    /// What came back for one request.
    package enum Answer: Sendable, Equatable {
        case status(Int, retryAfter: Duration?, closesConnection: Bool)
        /// No answer: the connection closed (`connectionClosed`) or the answer did not come in time, or the request
        /// could not be sent. `alone`: it was the only request on its connection this round, so nothing but this
        /// record can have made the control plane hang or drop the connection.
        case noAnswer(connectionClosed: Bool, alone: Bool)
    }

    package enum Fate: Sendable, Equatable {
        /// 2xx: done.
        case accepted
        /// 400, 413 or 422: the control plane will never take it; set aside in the dead-letter file.
        case rejected(status: Int)
        /// A failed answer (or, nil, no answer: a dropped connection or a timeout, the request alone on its
        /// connection) `failedAttempts` times while other records were accepted: set aside.
        case failedRepeatedly(status: Int?)
        /// Not done: sent again later.
        case retry
    }

    /// Why records were not delivered, for the metric and the log (the first, by severity).
    package enum Failure: Sendable, Equatable {
        case unauthorized(status: Int)
        case unavailable(status: Int)
        case unreachable
    }

    package enum Next: Sendable, Equatable {
        /// Something was done and nothing asked for a pause: send the rest now.
        case now
        /// Nothing was done: back off (exponentially, with jitter).
        case backOff
        /// The control plane asked for a pause (Retry-After on 429 or 503).
        case after(Duration)
    }

    /// One per record, in the batch's (the spool's) order.
    package var fates: [Fate]
    package var failure: Failure?
    package var next: Next
    /// Whether the next round may pipeline several requests per connection: false after a connection closed
    /// behind an answer or under unanswered requests, or a request timed out (so the next round finds which
    /// record gets no answer, each request alone on its connection).
    package var pipeline: Bool
    /// Failed attempts each record has had while others were accepted, this round included (for the next).
    package var serverErrors: [Int]

    /// How many failed attempts, each while the control plane accepted other records, set a record aside.
    package static let failedAttempts = 5

    /// What the round says of the control plane, for the log and the reachability gauge: a round in which anything
    /// was done says it works, whatever one record got; only a round with no progress says why it does not.
    package enum Health: Sendable, Equatable {
        case reachable, unauthorized, unavailable, unreachable
    }

    package var health: Health {
        if progressed { return .reachable }
        switch failure {
        case nil: return .reachable
        case .unauthorized: return .unauthorized
        case .unavailable: return .unavailable
        case .unreachable: return .unreachable
        }
    }

    /// How many records from the start of the batch are done (accepted or set aside): the spool is
    /// acknowledged through the last of them.
    package var donePrefix: Int { fates.firstIndex(of: .retry) ?? fates.count }
    package var accepted: Int { fates.filter { $0 == .accepted }.count }
    /// Whether any record is done (accepted or set aside).
    package var progressed: Bool { fates.contains { $0 != .retry } }

    /// Which connection (0 up to `connections` - 1) each of `count` requests goes on: contiguous runs, so each
    /// connection's pipeline answers its run in order.
    package static func connectionIndices(count: Int, connections: Int) -> [Int] {
        guard count > 0, connections > 0 else { return [] }
        let perConnection = (count + connections - 1) / connections
        return (0..<count).map { min($0 / perConnection, connections - 1) }
    }

    /// Statuses that mean the record itself is refused for good: sending it again cannot help.
    package static func isRejection(_ status: Int) -> Bool { status == 400 || status == 413 || status == 422 }

    /// - Parameter serverErrors: for each record, the server errors it had before (0 for a record new to it).
    package init(answers: [Answer], serverErrors previous: [Int]? = nil) {
        let previous = previous ?? [Int](repeating: 0, count: answers.count)
        let othersAccepted = answers.contains {
            if case .status(let status, _, _) = $0 { (200..<300).contains(status) } else { false }
        }
        var serverErrors = previous
        var fates: [Fate] = []
        var failure: Failure?
        var pipeline = true
        var retryAfter: Duration?
        func note(_ candidate: Failure) {
            // Severity: a refused key says most (the operator must act), then an answer, then silence.
            switch (failure, candidate) {
            case (nil, _), (.unreachable, .unavailable), (.unreachable, .unauthorized), (.unavailable, .unauthorized):
                failure = candidate
            default: break
            }
        }
        /// Counts a failed attempt against the record at `index` (only while others were accepted); whether that
        /// was its last.
        func counts(_ index: Int) -> Bool {
            guard othersAccepted else { return false }
            serverErrors[index] = previous[index] + 1
            return serverErrors[index] >= Self.failedAttempts
        }
        for (index, answer) in answers.enumerated() {
            switch answer {
            case .status(let status, let after, let closes):
                if closes { pipeline = false }
                if (200..<300).contains(status) {
                    fates.append(.accepted)
                    continue
                }
                if Self.isRejection(status) {
                    fates.append(.rejected(status: status))
                    continue
                }
                note(status == 401 || status == 403 ? .unauthorized(status: status) : .unavailable(status: status))
                if status != 429, counts(index) {
                    fates.append(.failedRepeatedly(status: status))
                } else {
                    fates.append(.retry)
                    if let after { retryAfter = max(retryAfter ?? .zero, after) }
                }
            case .noAnswer(_, let alone):
                // Closed, or timed out (which closes it too): the connection is gone. One request per connection
                // next, so a record that gets no answer is found without blaming those pipelined behind it.
                pipeline = false
                note(.unreachable)
                // Requests left unanswered behind another on their connection (an answer that announced the close,
                // or a request the control plane hangs or fails on) are not the record's fault.
                if alone, counts(index) {
                    fates.append(.failedRepeatedly(status: nil))
                } else {
                    fates.append(.retry)
                }
            }
        }
        self.fates = fates
        self.failure = failure
        self.pipeline = pipeline
        self.serverErrors = serverErrors
        let progressed = fates.contains { $0 != .retry }
        if failure == nil {
            next = .now
        } else if let retryAfter {
            next = .after(retryAfter)
        } else {
            next = progressed ? .now : .backOff
        }
    }
}

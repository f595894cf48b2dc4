/// What the reporter makes of one round of requests (a batch from the spool, pipelined over its connections):
/// which records are done, why the rest are not, and when to send again. Pure: no sockets, no clock.
///
/// Every answered request counts on its own. A control plane that closes the connection after an answer
/// (`Connection: close`, HTTP/1.0, a keep-alive limit) leaves the requests pipelined behind it unanswered: they
/// are sent again at once on a new connection, one at a time per connection until answers keep it open again.
package struct DeliveryRound: Sendable, Equatable {
    /// What came back for one request.
    package enum Answer: Sendable, Equatable {
        case status(Int, retryAfter: Duration?, closesConnection: Bool)
        /// No answer: the connection closed (`connectionClosed`) or timed out first, or could not send.
        case noAnswer(connectionClosed: Bool)
    }

    package enum Fate: Sendable, Equatable {
        /// 2xx: done.
        case accepted
        /// 400, 413 or 422: the control plane will never take it; set aside in the dead-letter file.
        case rejected(status: Int)
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
    /// behind an answer or under unanswered requests.
    package var pipeline: Bool

    /// How many records from the start of the batch are done (accepted or set aside): the spool is
    /// acknowledged through the last of them.
    package var donePrefix: Int { fates.firstIndex(of: .retry) ?? fates.count }
    package var accepted: Int { fates.filter { $0 == .accepted }.count }

    /// Statuses that mean the record itself is refused for good: sending it again cannot help.
    package static func isRejection(_ status: Int) -> Bool { status == 400 || status == 413 || status == 422 }

    package init(answers: [Answer]) {
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
        for answer in answers {
            switch answer {
            case .status(let status, let after, let closes):
                if closes { pipeline = false }
                if (200..<300).contains(status) {
                    fates.append(.accepted)
                } else if Self.isRejection(status) {
                    fates.append(.rejected(status: status))
                } else {
                    fates.append(.retry)
                    note(status == 401 || status == 403 ? .unauthorized(status: status) : .unavailable(status: status))
                    if let after { retryAfter = max(retryAfter ?? .zero, after) }
                }
            case .noAnswer(let closed):
                if closed { pipeline = false }
                fates.append(.retry)
                note(.unreachable)
            }
        }
        self.fates = fates
        self.failure = failure
        self.pipeline = pipeline
        let progressed = fates.prefix { $0 != .retry }.count > 0
        if failure == nil {
            next = .now
        } else if let retryAfter {
            next = .after(retryAfter)
        } else {
            next = progressed ? .now : .backOff
        }
    }
}

@testable import ControlPlane
import Testing

@Suite struct DeliveryRoundTests {
    static let ok = DeliveryRound.Answer.status(200, retryAfter: nil, closesConnection: false)
    static let okThenClosed = DeliveryRound.Answer.status(200, retryAfter: nil, closesConnection: true)
    static let closed = DeliveryRound.Answer.noAnswer(connectionClosed: true)
    static let timedOut = DeliveryRound.Answer.noAnswer(connectionClosed: false)

    /// Connection: close behind the first answer: it is done, the rest go again at once, one per connection.
    @Test func anAnswerThenAClosedConnectionAcknowledgesTheAnsweredAndResendsTheRestNow() {
        let round = DeliveryRound(answers: [Self.okThenClosed, Self.closed, Self.closed])
        #expect(round.fates == [.accepted, .retry, .retry])
        #expect(round.donePrefix == 1 && round.accepted == 1)
        #expect(round.next == .now)
        #expect(!round.pipeline)
        #expect(round.failure == .unreachable)
    }

    @Test func noAnswerAtAllBacksOff() {
        let round = DeliveryRound(answers: [Self.timedOut, Self.timedOut])
        #expect(round.donePrefix == 0 && round.next == .backOff && round.pipeline)
    }

    @Test func keepAliveAnswersKeepPipelining() {
        let round = DeliveryRound(answers: [Self.ok, Self.ok])
        #expect(round.fates == [.accepted, .accepted] && round.next == .now && round.pipeline && round.failure == nil)
    }

    @Test func retryAfterIsHonouredAndARefusedKeyIsTheFailureNamed() {
        let round = DeliveryRound(answers: [
            .status(503, retryAfter: .seconds(2), closesConnection: false), Self.timedOut,
            .status(401, retryAfter: nil, closesConnection: false),
        ])
        #expect(round.next == .after(.seconds(2)))
        #expect(round.failure == .unauthorized(status: 401))
    }

    @Test func invalidRecordsAreRejectedForGood() {
        let round = DeliveryRound(answers: [
            .status(400, retryAfter: nil, closesConnection: false), .status(413, retryAfter: nil, closesConnection: false),
            .status(422, retryAfter: nil, closesConnection: false), Self.ok,
        ])
        #expect(round.fates == [.rejected(status: 400), .rejected(status: 413), .rejected(status: 422), .accepted])
        #expect(round.donePrefix == 4 && round.next == .now)
    }
}

extension DeliveryRoundTests {
    static func status(_ code: Int) -> DeliveryRound.Answer { .status(code, retryAfter: nil, closesConnection: false) }

    /// One record answered 500 while the rest are accepted: the rest are done, each on its own, and the 500 counts
    /// against that record; the fifth such answer sets it aside.
    @Test func aRecordThatKeepsFailingWhileOthersAreAcceptedIsSetAsideAtTheFifth() {
        var errors = [0, 0, 0]
        for attempt in 1..<DeliveryRound.serverErrorAttempts {
            let round = DeliveryRound(answers: [Self.status(500), Self.ok, Self.ok], serverErrors: errors)
            #expect(round.fates == [.retry, .accepted, .accepted])
            #expect(round.donePrefix == 0 && round.progressed && round.next == .now)
            #expect(round.serverErrors[0] == attempt && round.failure == .unavailable(status: 500))
            errors = [round.serverErrors[0], 0, 0]
        }
        let last = DeliveryRound(answers: [Self.status(500), Self.ok], serverErrors: [errors[0], 0])
        #expect(last.fates == [.failedRepeatedly(status: 500), .accepted] && last.donePrefix == 2)
    }

    /// Nothing accepted: an outage, which counts against no record however long it lasts.
    @Test func serverErrorsWithNothingAcceptedAreAnOutage() {
        let round = DeliveryRound(answers: [Self.status(500), Self.status(502)], serverErrors: [99, 4])
        #expect(round.fates == [.retry, .retry] && round.next == .backOff)
        #expect(round.serverErrors == [99, 4])
    }

    /// Throttling is never the record's fault, and neither is anything while nothing at all is accepted (a refused
    /// key, a wrong URL, an outage): retried, never counted.
    @Test func throttlingAndRoundsWithNothingAcceptedAreNeverTheRecordsFault() {
        let throttled = DeliveryRound(answers: [Self.status(429), Self.ok], serverErrors: [100, 0])
        #expect(throttled.fates == [.retry, .accepted] && throttled.serverErrors == [100, 0])
        for code in [401, 403, 404, 409, 500] {
            let round = DeliveryRound(answers: [Self.status(code), Self.status(code), Self.closed], serverErrors: [100, 4, 4])
            #expect(round.fates == [.retry, .retry, .retry] && round.serverErrors == [100, 4, 4], "\(code)")
        }
    }

    /// Any other failed answer one record gets while others are accepted (403, 404, 409 for that one record; a
    /// connection dropped under it) counts against it like a 5xx: the fifth sets it aside, so it never blocks the
    /// front of the spool for good.
    @Test func anyFailureOneRecordKeepsGettingWhileOthersAreAcceptedSetsItAsideAtTheFifth() {
        for answer in [Self.status(401), Self.status(403), Self.status(404), Self.status(409), Self.status(408), Self.closed] {
            var errors = 0
            for attempt in 1..<DeliveryRound.failedAttempts {
                let round = DeliveryRound(answers: [answer, Self.ok], serverErrors: [errors, 0])
                #expect(round.fates == [.retry, .accepted] && round.serverErrors[0] == attempt, "\(answer)")
                errors = round.serverErrors[0]
            }
            let last = DeliveryRound(answers: [answer, Self.ok], serverErrors: [errors, 0])
            let status: Int? = if case .status(let code, _, _) = answer { code } else { nil }
            #expect(last.fates == [.failedRepeatedly(status: status), .accepted] && last.donePrefix == 2, "\(answer)")
        }
        // Requests left unanswered behind an answer that announced the close are not the record's fault.
        let announced = DeliveryRound(answers: [Self.okThenClosed, Self.closed], serverErrors: [0, 4])
        #expect(announced.fates == [.accepted, .retry] && announced.serverErrors == [0, 4])
    }

    /// Only a round with no progress says the control plane does not work: a 401 for one record while others are
    /// accepted leaves it reachable (the log and gauge do not flip every round).
    @Test func healthChangesOnlyInARoundWithNoProgress() {
        #expect(DeliveryRound(answers: [Self.status(401), Self.ok]).health == .reachable)
        #expect(DeliveryRound(answers: [Self.status(503), Self.ok]).health == .reachable)
        #expect(DeliveryRound(answers: [Self.status(401), Self.status(401)]).health == .unauthorized)
        #expect(DeliveryRound(answers: [Self.status(503), Self.timedOut]).health == .unavailable)
        #expect(DeliveryRound(answers: [Self.timedOut]).health == .unreachable)
        #expect(DeliveryRound(answers: [Self.status(400)]).health == .reachable)
    }
}

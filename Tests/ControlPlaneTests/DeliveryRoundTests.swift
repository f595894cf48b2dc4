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

    /// Faults that are not the record's are retried, never set aside, whatever else is accepted.
    @Test func keyThrottlingAndMisdirectionAreNeverTheRecordsFault() {
        for code in [401, 403, 404, 408, 429] {
            let round = DeliveryRound(answers: [Self.status(code), Self.ok], serverErrors: [100, 0])
            #expect(round.fates == [.retry, .accepted], "\(code)")
        }
    }
}

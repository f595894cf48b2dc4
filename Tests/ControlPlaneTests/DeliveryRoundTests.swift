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

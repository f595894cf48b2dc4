@testable import ControlPlane
import Testing

@Suite struct DeliveryRoundTests {
    static let ok = DeliveryRound.Answer.status(200, retryAfter: nil, closesConnection: false)
    static let okThenClosed = DeliveryRound.Answer.status(200, retryAfter: nil, closesConnection: true)
    /// No answer, the request alone on its connection: nothing else can have caused it.
    static let closed = DeliveryRound.Answer.noAnswer(connectionClosed: true, alone: true)
    static let timedOut = DeliveryRound.Answer.noAnswer(connectionClosed: false, alone: true)
    /// No answer, the request pipelined with others on its connection.
    static let closedBehind = DeliveryRound.Answer.noAnswer(connectionClosed: true, alone: false)
    static let timedOutBehind = DeliveryRound.Answer.noAnswer(connectionClosed: false, alone: false)

    /// Connection: close behind the first answer: it is done, the rest go again at once, one per connection.
    @Test func anAnswerThenAClosedConnectionAcknowledgesTheAnsweredAndResendsTheRestNow() {
        let round = DeliveryRound(answers: [Self.okThenClosed, Self.closedBehind, Self.closedBehind])
        #expect(round.fates == [.accepted, .retry, .retry])
        #expect(round.donePrefix == 1 && round.accepted == 1)
        #expect(round.next == .now)
        #expect(!round.pipeline)
        #expect(round.failure == .unreachable)
    }

    @Test func noAnswerAtAllBacksOff() {
        let round = DeliveryRound(answers: [Self.timedOutBehind, Self.timedOutBehind])
        #expect(round.donePrefix == 0 && round.next == .backOff && !round.pipeline)
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
        for attempt in 1..<DeliveryRound.failedAttempts {
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
        let announced = DeliveryRound(answers: [Self.okThenClosed, Self.closedBehind], serverErrors: [0, 4])
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

extension DeliveryRoundTests {
    /// A record whose request the control plane holds until the timeout, alone on its connection, while it accepts
    /// the others: each timeout counts against it like an error answer, and the fifth sets it aside (no status), so
    /// it cannot hold the front of the spool for good.
    @Test func aRecordThatTimesOutAloneWhileOthersAreAcceptedIsSetAsideAtTheFifth() {
        var errors = 0
        for attempt in 1..<DeliveryRound.failedAttempts {
            let round = DeliveryRound(answers: [Self.timedOut, Self.ok, Self.ok], serverErrors: [errors, 0, 0])
            #expect(round.fates == [.retry, .accepted, .accepted] && round.serverErrors[0] == attempt)
            #expect(round.next == .now && !round.pipeline && round.health == .reachable)
            errors = round.serverErrors[0]
        }
        let last = DeliveryRound(answers: [Self.timedOut, Self.ok], serverErrors: [errors, 0])
        #expect(last.fates == [.failedRepeatedly(status: nil), .accepted] && last.donePrefix == 2)
        // Nothing accepted: an outage (or a control plane that hangs on everything), never the record's fault.
        let outage = DeliveryRound(answers: [Self.timedOut, Self.timedOut], serverErrors: [4, 4])
        #expect(outage.fates == [.retry, .retry] && outage.serverErrors == [4, 4] && outage.next == .backOff)
    }

    /// A timeout (or a dropped connection) in a pipelined round blames no record: the one the control plane hangs on
    /// may be any before it on its connection. The next round sends one request per connection to find it.
    @Test func noAnswerOnAPipelinedConnectionBlamesNoRecordAndTheNextRoundSendsEachAlone() {
        for behind in [Self.timedOutBehind, Self.closedBehind] {
            let round = DeliveryRound(answers: [Self.ok, behind, behind, Self.ok], serverErrors: [0, 4, 4, 0])
            #expect(round.fates == [.accepted, .retry, .retry, .accepted] && round.serverErrors == [0, 4, 4, 0], "\(behind)")
            #expect(!round.pipeline && round.next == .now, "\(behind)")
        }
    }

    @Test func requestsGoOnConnectionsInContiguousRuns() {
        #expect(DeliveryRound.connectionIndices(count: 4, connections: 4) == [0, 1, 2, 3])
        #expect(DeliveryRound.connectionIndices(count: 3, connections: 4) == [0, 1, 2])
        #expect(DeliveryRound.connectionIndices(count: 5, connections: 2) == [0, 0, 0, 1, 1])
        #expect(DeliveryRound.connectionIndices(count: 0, connections: 4) == [])
    }

    /// The reporter's rounds, played without sockets: a backlog whose oldest record makes the control plane hang
    /// until the timeout (so every request pipelined behind it on its connection gets no answer either). The record
    /// is set aside after five timeouts of its own, and every other record is delivered, none set aside with it.
    @Test func aRecordTheControlPlaneHangsOnIsSetAsideAndNoOtherWithIt() {
        let poison = 0
        var pending = Array(0..<200)  // the spool, oldest first
        var errors: [Int: Int] = [:]
        var accepted: Set<Int> = []
        var setAside: [Int] = []
        var pipeline = true
        var rounds = 0
        while !pending.isEmpty, rounds < 40 {
            rounds += 1
            let perConnection = pipeline ? 32 : 1
            let batch = Array(pending.prefix(perConnection * 4))
            let connections = min(4, (batch.count + perConnection - 1) / perConnection)
            let onConnection = DeliveryRound.connectionIndices(count: batch.count, connections: connections)
            // Answers come in order on a connection: from the poison on, its connection times out.
            let hung = batch.firstIndex(of: poison).map { onConnection[$0] }
            let answers = batch.indices.map { index -> DeliveryRound.Answer in
                let alone = onConnection.filter { $0 == onConnection[index] }.count == 1
                if onConnection[index] == hung, index >= batch.firstIndex(of: poison)! {
                    return .noAnswer(connectionClosed: false, alone: alone)
                }
                return Self.ok
            }
            let round = DeliveryRound(answers: answers, serverErrors: batch.map { errors[$0] ?? 0 })
            pipeline = round.pipeline
            for (index, record) in batch.enumerated() {
                switch round.fates[index] {
                case .accepted: accepted.insert(record)
                case .failedRepeatedly, .rejected: setAside.append(record)
                case .retry: errors[record] = round.serverErrors[index]
                }
            }
            pending.removeAll { accepted.contains($0) || setAside.contains($0) }
        }
        #expect(pending.isEmpty, "still pending after \(rounds) rounds: \(pending.prefix(10))")
        #expect(setAside == [poison])
        #expect(accepted.count == 199 && !accepted.contains(poison))
    }
}

import Logging
import NIOCore
import NIOPosix
import OpenSSLTLS
import ServiceLifecycle
import Synchronization
public import Telemetry

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Delivers every action to the control plane (`POST {KAIZEN_API_URL}/v1/verdicts`) without ever making the
/// data path wait, and without losing one.
///
/// `record` appends to an in-memory queue. The service writes the queue to the write-ahead `Spool` (so a
/// restart or a crash keeps it), then sends from the spool over one keep-alive connection, several requests
/// in flight, each answer judged on its own (`DeliveryRound`): an accepted action is not sent again by this run
/// (nor by the next: the spool saves those done out of order, see `Spool.settle`), and one the control plane refuses (400,
/// 413, 422) or keeps failing (five error answers, dropped connections or timeouts while accepting others) is set aside in a
/// dead-letter file with the server's answer, so it never holds up the rest. Failures back off exponentially with
/// full jitter (honouring `Retry-After` on 429 and 503); 401/403 keep the data and log one line until the key works.
public final class Reporter: ActionSink, Service {
    public struct Configuration: Sendable {
        public var endpoint: ControlPlaneEndpoint
        public var apiKey: String
        /// The agent named in the records the reporter makes itself (dropped-action gaps).
        public var agent: String
        /// `nil` for an http:// control plane on loopback.
        public var tls: OpenSSLContext?
        public var spoolDirectory: String
        public var spoolMaxBytes: Int64
        /// Requests sent on each connection before waiting for their answers.
        public var inFlight: Int = 32
        /// Keep-alive connections used side by side while there is a backlog (one when it is small), so a
        /// distant control plane (a long round trip) still drains quickly.
        public var connections: Int = 4
        /// How long one request may wait for its answer; then it counts as unanswered (`DeliveryRound`).
        public var responseTimeout: TimeAmount = .seconds(30)
        public var backoffBase: Duration = .milliseconds(200)
        public var backoffCap: Duration = .seconds(30)
        /// On shutdown (after the proxy's drain), how long requests in flight may still take to be answered;
        /// then they are cancelled, their actions kept in the spool.
        public var shutdownGrace: Duration = .seconds(2)
        /// The dead-letter file's cap (it and its one older generation: twice this at most); by default a
        /// sixteenth of the spool's cap, at least 64 KiB.
        public var deadLetterMaxBytes: Int64
        public var metrics: ProxyMetrics?

        public init(
            endpoint: ControlPlaneEndpoint,
            apiKey: String,
            agent: String,
            tls: OpenSSLContext?,
            spoolDirectory: String,
            spoolMaxBytes: Int64
        ) {
            self.endpoint = endpoint
            self.apiKey = apiKey
            self.agent = agent
            self.tls = tls
            self.spoolDirectory = spoolDirectory
            self.spoolMaxBytes = spoolMaxBytes
            self.deadLetterMaxBytes = max(64 * 1024, spoolMaxBytes / 16)
        }
    }

    private let configuration: Configuration
    private let logger: Logger
    /// Actions waiting for the spool writer (encoded by it, off the event loops).
    private let queue = BatchQueue<ConnectAction>(limit: 100_000)
    /// Signals the delivery task that the spool writer added something.
    private let spooled = BatchQueue<Void>(limit: 1)
    private let spoolBox: Mutex<Spool?>
    private let dropLog = Mutex(LogEvery())
    private let deadLetterLog = Mutex(LogEvery())
    private let deadLetterWriteLog = Mutex(LogEvery())
    private let writeLog = Mutex(LogEvery())
    /// The queue overflowing (a burst the spool writer cannot keep up with) is logged once a minute, with a count.
    private let queueFullLog = Mutex(LogEvery())
    /// Actions the spool could not take (a full disk), to report in a gap record once it can.
    private let writeLoss = Mutex<Spool.Drops?>(nil)
    /// Since when every spool write has failed; nil while writes succeed.
    private let writeFailingSince = Mutex<ContinuousClock.Instant?>(nil)
    /// The delivery task's connections, for shutdown to close when their answers take too long.
    private let connectionsInUse = Mutex<[ControlPlaneConnection]>([])
    private let deliveryEnded = Mutex(false)
    /// When the spool writer's pass in progress started; nil between passes.
    private let spoolPassStarted = Mutex<ContinuousClock.Instant?>(nil)

    /// Opens the spool (and recovers what a previous run left in it) before anything is accepted.
    public init(configuration: Configuration, logger: Logger) throws(Spool.Failure) {
        self.configuration = configuration
        self.logger = logger
        let spool = try Spool(directory: configuration.spoolDirectory, maxBytes: configuration.spoolMaxBytes)
        Self.reportCorrupted(in: spool, configuration: configuration, logger: logger)
        self.spoolBox = Mutex(spool)
    }

    /// Records lost to corrupt frames (found when the spool opened, or by a read later): reported in their place
    /// in a gap record, counted and logged.
    private static func reportCorrupted(in spool: Spool, configuration: Configuration, logger: Logger) {
        guard let lost = spool.takeCorrupted() else { return }
        var json = JSONWriter()
        DroppedActionsRecord(agent: configuration.agent, drops: lost, reason: "spool record corrupted").writeJSON(to: &json)
        _ = try? spool.append(json.take())
        spool.sync()
        configuration.metrics?.dropped(lost.records, stage: "corrupt")
        logger.error(
            "the spool in KAIZEN_SPOOL_DIR had corrupt records (a disk fault); they were skipped, the intact ones after them kept, and a gap record counts them",
            metadata: ["lost": "\(lost.records)", "bytes": "\(lost.bytes)"]
        )
    }

    public func record(_ record: ActionRecord) {
        guard case .action(let action) = record else { return }  // close records stay local
        queue.append(action)
    }

    public func run() async throws {
        // Two tasks: one moves every queued action to disk at once, the other sends from the disk, so an action
        // is durable within moments of its connection, whatever the network does. The sender is unstructured:
        // shutdown waits for its requests in flight only `shutdownGrace`, never a slow control plane's timeout.
        let delivery = Task { await self.deliveryLoop() }
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await self.spoolWriterLoop()
            } onGracefulShutdown: {
                self.finish()
            }
        } onCancel: {
            self.finish()
        }
        // Whatever is still queued goes to disk, for the next run to send.
        spoolQueued()
        spoolBox.withLock { $0?.sync() }
        if !(await waitForDelivery(within: configuration.shutdownGrace)) {
            // Requests still unanswered are given up: their actions stay in the spool for the next run.
            let open = connectionsInUse.withLock { $0 }
            logger.notice(
                "requests to the control plane still unanswered at shutdown are cancelled; their actions stay in the spool",
                metadata: ["connections": "\(open.count)", "backlog": "\(pendingCount())"]
            )
            for connection in open { await connection.close() }
            _ = await waitForDelivery(within: .seconds(1))
        }
        _ = delivery
        spoolBox.withLock { $0?.sync() }
    }

    /// Whether the delivery task ended within `limit`.
    private func waitForDelivery(within limit: Duration) async -> Bool {
        let deadline = ContinuousClock.now + limit
        while !deliveryEnded.withLock({ $0 }) {
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    private func finish() {
        queue.finish()
        spooled.finish()
    }

    private func spoolWriterLoop() async {
        while true {
            let finished = queue.isFinished  // read first: once finished, nothing more can be added
            if spoolQueued() > 0 {
                spooled.append(())
            }
            if finished { return }
            await queue.waitForItems()
        }
    }

    private var isFinished: Bool { queue.isFinished }

    /// Moves the in-memory queue into the spool; returns how many records moved.
    @discardableResult
    private func spoolQueued() -> Int {
        spoolPassStarted.withLock { $0 = .now }
        defer { spoolPassStarted.withLock { $0 = nil } }
        let (actions, dropped) = queue.takeAll()
        configuration.metrics?.dropped(dropped, stage: "queue")
        if dropped > 0, let count = queueFullLog.withLock({ $0.note(dropped) }) {
            logger.error(
                "the reporter's queue was full; actions were dropped before reaching the spool (logged once a minute)",
                metadata: ["dropped": "\(count)"])
        }
        guard !actions.isEmpty else { return 0 }
        let records = actions.map { action -> [UInt8] in
            var json = JSONWriter()
            action.writeJSON(to: &json)
            return json.take()
        }
        spoolBox.withLock { box in
            guard let spool = box else { return }
            recreateIfRemoved(spool)
            let lost = write(records, to: spool)
            recordDrops(in: spool)
            Self.reportCorrupted(in: spool, configuration: configuration, logger: logger)
            spool.sync()
            if lost == 0 {
                logger.debug("actions spooled", metadata: ["spooled": "\(records.count)", "spool.pending": "\(spool.pendingRecords)"])
            }
        }
        return records.count
    }

    /// A spool directory removed under the running proxy (everything in it lost, later writes going to deleted
    /// files) is created again; the undelivered actions it held are counted (`stage="disk"`), logged, and reported
    /// in a gap record.
    private func recreateIfRemoved(_ spool: Spool) {
        do {
            guard let lost = try spool.recreateIfRemoved() else { return }
            // Actions counted by lost gap records were counted when those were made; their count is carried on.
            configuration.metrics?.dropped(lost.newlyDropped, stage: "disk")
            var json = JSONWriter()
            DroppedActionsRecord(agent: configuration.agent, drops: lost, reason: "spool directory removed").writeJSON(to: &json)
            _ = try? spool.append(json.take())
            logger.error(
                "the spool directory (KAIZEN_SPOOL_DIR) was removed while the proxy ran: it is created again; the undelivered actions it held are lost, and a gap record counts them",
                metadata: ["lost": "\(lost.records)", "directory": "\(configuration.spoolDirectory)"]
            )
        } catch {
            // Writes fail until it can be created: counted and logged as such, and /readyz turns unready.
            if let count = writeLog.withLock({ $0.note(0) }) {
                logger.error(
                    "the spool directory (KAIZEN_SPOOL_DIR) was removed and cannot be created again",
                    metadata: ["error": "\(error)", "lost": "\(count)"]
                )
            }
        }
    }

    /// Appends `records` to the spool; returns how many could not be written (a full disk, an I/O error). Those are
    /// lost: counted (`actions_dropped_total{stage="disk"}`), logged at most once a minute, and once the spool
    /// takes writes again a gap record (reason "spool write failed") is spooled in their place.
    private func write(_ records: [[UInt8]], to spool: Spool) -> Int {
        // Part of the batch may have been written before a segment rotation failed: only the rest is tried again
        // (one by one), so exactly the ones that are not written are counted, and none is written twice.
        let (lostIndices, failure) = spool.appendKeepingWhatFits(records)
        let lost = lostIndices.map { records[$0] }
        let now = ContinuousClock.now
        if lost.isEmpty {
            writeFailingSince.withLock { $0 = nil }
            if let loss = writeLoss.withLock({ $0 }) {
                var json = JSONWriter()
                DroppedActionsRecord(agent: configuration.agent, drops: loss, reason: "spool write failed").writeJSON(to: &json)
                if (try? spool.append(json.take())) != nil {
                    writeLoss.withLock { $0 = nil }
                    logger.notice("the spool takes writes again; a gap record counts the actions lost", metadata: ["lost": "\(loss.records)"])
                }
            }
            return 0
        }
        writeFailingSince.withLock { $0 = $0 ?? now }
        let millis = WallClock.nowMillis()
        writeLoss.withLock { loss in
            var counted = loss ?? Spool.Drops(records: 0, bytes: 0, firstAt: millis, lastAt: millis)
            counted.records += lost.count
            counted.bytes += Int64(lost.reduce(0) { $0 + $1.count })
            counted.lastAt = millis
            if counted.oldestStartedAt == nil { counted.oldestStartedAt = lost.lazy.compactMap(Spool.startedAt).first }
            if let newest = lost.last.flatMap(Spool.startedAt) { counted.newestStartedAt = newest }
            loss = counted
        }
        configuration.metrics?.dropped(lost.count, stage: "disk")
        if let count = writeLog.withLock({ $0.note(lost.count, now: now) }) {
            logger.error(
                "cannot write the spool in KAIZEN_SPOOL_DIR: actions are lost (logged at most once a minute, with the count); a gap record will count them once it can be written",
                metadata: ["error": "\(failure.map { "\($0)" } ?? "unknown")", "lost": "\(count)", "directory": "\(configuration.spoolDirectory)"]
            )
        }
        return lost.count
    }

    /// When the cap made the spool drop its oldest actions, a gap record takes their place in the spool (so it
    /// is sent in order and survives a restart). An error line says so, at most once a minute with the
    /// count since the last line.
    private func recordDrops(in spool: Spool) {
        // The gap record itself may push out one more segment: account for that too (bounded).
        for _ in 0..<4 {
            guard let drops = spool.takeDropped() else { return }
            // Actions counted by dropped gap records were counted when those were made.
            configuration.metrics?.dropped(drops.newlyDropped, stage: "spool")
            let gap = DroppedActionsRecord(agent: configuration.agent, drops: drops)
            var json = JSONWriter()
            gap.writeJSON(to: &json)
            do {
                try spool.append(json.take())
            } catch {
                logger.error("cannot spool a dropped-actions record", metadata: ["error": "\(error)"])
            }
            if let unlogged = dropLog.withLock({ $0.note(drops.newlyDropped) }) {
                logger.error(
                    "the spool reached KAIZEN_SPOOL_MAX_BYTES: the oldest undelivered actions were dropped; gap records (kind egress_gap) with their count and time range are sent in their place",
                    metadata: [
                        "dropped": "\(unlogged)", "oldest": "\(drops.oldestStartedAt ?? "unknown")",
                        "newest": "\(drops.newestStartedAt ?? "unknown")",
                    ]
                )
            }
        }
    }

    private enum Health {
        case unknown, reachable, unreachable, unauthorized
    }

    private func deliveryLoop() async {
        defer { deliveryEnded.withLock { $0 = true } }
        var pool: [ControlPlaneConnection] = [] {
            didSet { connectionsInUse.withLock { [pool] in $0 = pool } }
        }
        var failures = 0
        var health = Health.unknown
        // Whether a request got no answer in time while the control plane answered others: the rounds send each
        // request alone until the record it hangs on is found (`DeliveryRound`).
        var isolating = false
        var pipeline = true
        // Server errors per record while others were accepted (DeliveryRound), for records not yet done.
        var serverErrors: [Spool.Position: Int] = [:]
        // Records to set aside whose dead-letter line could not be written: kept in the spool (not sent again),
        // the line tried again each round; `unwrittenRetries` spaces the tries while nothing else is to send.
        var unwritten: [Spool.Position: SetAside] = [:]
        var unwrittenRetries = 0
        while !isFinished {
            _ = spooled.takeAll()
            if !unwritten.isEmpty {
                retrySetAside(&unwritten)
                unwrittenRetries = unwritten.isEmpty ? 0 : unwrittenRetries + 1
            }
            // After a connection closed behind an answer, one request per connection until they stay open.
            let perConnection = pipeline ? configuration.inFlight : 1
            let limit = perConnection * configuration.connections
            let batch = Array(
                spoolBox.withLock { $0?.peek(limit: limit + unwritten.count) ?? [] }
                    .lazy.filter { unwritten[$0.0] == nil }.prefix(limit))
            if batch.isEmpty {
                if unwritten.isEmpty {
                    await spooled.waitForItems()
                } else {
                    await waitForSpooled(atMost: retryDelay(unwrittenRetries))
                }
                continue
            }
            do {
                pool = pool.filter(\.isOpen)
                // One connection per `perConnection` records of backlog, up to the configured number.
                let wanted = min(configuration.connections, (batch.count + perConnection - 1) / perConnection)
                while pool.count < wanted {
                    pool.append(
                        try await ControlPlaneConnection.connect(
                            to: configuration.endpoint, tls: configuration.tls, responseTimeout: configuration.responseTimeout))
                }
            } catch {
                configuration.metrics?.deliveryFailed(reason: "unreachable")
                failures += 1
                if health != .unreachable {
                    logger.warning(
                        "control plane unreachable; actions are spooled",
                        metadata: ["error": "\(error)", "backlog": "\(pendingCount())"]
                    )
                    health = .unreachable
                }
                await closeAll(&pool)
                await pause(backoff(failures))
                continue
            }
            let started = ContinuousClock.now
            let onConnection = DeliveryRound.connectionIndices(count: batch.count, connections: pool.count)
            let answers = await send(batch, over: pool, onConnection: onConnection)
            let alone = onConnection.map { connection in onConnection.lazy.filter { $0 == connection }.count == 1 }
            let round = DeliveryRound(
                answers: zip(answers, alone).map(Self.answer), serverErrors: batch.map { serverErrors[$0.0] ?? 0 })
            pipeline = round.pipeline
            settle(round, batch: batch, answers: answers, unwritten: &unwritten)
            for (index, entry) in batch.enumerated() {
                if round.fates[index] == .retry, round.serverErrors[index] > 0 {
                    serverErrors[entry.0] = round.serverErrors[index]
                } else {
                    serverErrors[entry.0] = nil
                }
            }
            logger.debug(
                "delivery round",
                metadata: [
                    "sent": "\(batch.count)", "connections": "\(pool.count)", "accepted": "\(round.accepted)",
                    "done": "\(round.donePrefix)", "failure": "\(round.failure.map { "\($0)" } ?? "none")",
                    "first_error": "\(Self.firstError(answers))",
                ])
            // Only a round with no progress says the control plane does not work: one record's 401 or 5xx while
            // others are accepted is that record's (counted, and set aside in the end), so the log and the
            // reachability gauge do not flip every round.
            let reason: String? =
                switch round.failure {
                case .unauthorized: "unauthorized"
                case .unavailable: "unavailable"
                case .unreachable: round.progressed ? nil : "unreachable"
                case nil: nil
                }
            if let reason { configuration.metrics?.deliveryFailed(reason: reason, reachable: round.progressed) }
            // No answer in time to a request the control plane took, while it answers others (this round, or it was
            // reachable before and only one request alone went unanswered): not an outage, nor a refused key, but a
            // record it hangs on, which the next rounds look for by sending each request alone. Said once, in those
            // words, until a round has no timeout; more than one request alone unanswered in a round that did
            // nothing is a control plane that answers nothing (unreachable, below).
            let timeouts = zip(answers, alone).filter { Self.isAnswerTimeout($0.0) }
            let onlyTimeouts = answers.allSatisfy { if case .failure = $0 { Self.isAnswerTimeout($0) } else { true } }
            let hangsOnSome =
                !timeouts.isEmpty
                && (round.progressed
                    || ((isolating || health == .reachable) && onlyTimeouts && timeouts.filter(\.1).count <= 1))
            if hangsOnSome, !isolating {
                logger.warning(
                    "a delivery to the control plane timed out (no answer within KAIZEN_DELIVERY_TIMEOUT) while it answers others: actions are sent one at a time, one request per connection, to find the one it does not answer (set aside after \(DeliveryRound.failedAttempts) timeouts while others are accepted); the rest are delivered meanwhile",
                    metadata: ["timed_out": "\(timeouts.count)", "backlog": "\(pendingCount())"]
                )
            } else if !hangsOnSome, isolating, round.failure == nil {
                logger.notice("the control plane answers every request in time again", metadata: ["backlog": "\(pendingCount())"])
            }
            isolating = hangsOnSome
            switch (round.health, round.failure) {
            case (.unauthorized, .unauthorized(let status)):
                if health != .unauthorized {
                    logger.error(
                        "the control plane refused the API key (HTTP \(status)); actions are kept and retried: check KAIZEN_API_KEY",
                        metadata: ["backlog": "\(pendingCount())"]
                    )
                    health = .unauthorized
                }
            case (.unavailable, .unavailable(let status)):
                if health != .unreachable {
                    logger.warning(
                        "control plane unavailable (HTTP \(status)); actions are spooled",
                        metadata: ["backlog": "\(pendingCount())"]
                    )
                    health = .unreachable
                }
            case (.unreachable, _):
                if health != .unreachable, !hangsOnSome {
                    logger.warning(
                        "control plane unreachable; actions are spooled",
                        metadata: ["error": "\(Self.firstError(answers))", "backlog": "\(pendingCount())"]
                    )
                    health = .unreachable
                }
            default:
                break
            }
            if round.accepted > 0 { configuration.metrics?.delivered(round.accepted, since: started) }
            if round.progressed, health != .reachable {
                if health == .unreachable || health == .unauthorized {
                    logger.notice("control plane reachable again", metadata: ["backlog": "\(pendingCount())"])
                }
                health = .reachable
            }
            switch round.next {
            case .now:
                failures = 0
            case .backOff:
                failures += 1
                await closeAll(&pool)
                await pause(backoff(failures))
            case .after(let duration):
                failures += 1
                await closeAll(&pool)
                await pause(duration)
            }
        }
        await closeAll(&pool)
    }

    private func closeAll(_ pool: inout [ControlPlaneConnection]) async {
        for connection in pool { await connection.close() }
        pool = []
    }

    /// A request's answer, or why it has none.
    private typealias Outcome = Result<ControlPlaneResponse, any Error>

    /// - Parameter alone: whether the request was the only one on its connection in the round.
    private static func answer(_ outcome: Outcome, alone: Bool) -> DeliveryRound.Answer {
        switch outcome {
        case .success(let response):
            .status(response.status, retryAfter: retryAfter(response), closesConnection: response.closesConnection)
        case .failure(let error):
            .noAnswer(connectionClosed: !(error is ControlPlaneTimeout), alone: alone)
        }
    }

    /// Whether the request was sent and its answer did not come in time.
    private static func isAnswerTimeout(_ outcome: Outcome) -> Bool {
        if case .failure(let error) = outcome, let timeout = error as? ControlPlaneTimeout { timeout.what == "answer" } else { false }
    }

    private static func firstError(_ outcomes: [Outcome]) -> String {
        for case .failure(let error) in outcomes { return "\(error)" }
        return "none"
    }

    /// Sends the batch spread over the connections (`onConnection`: which one each record goes on), pipelined on
    /// each, and returns each request's answer (or why it has none), in the batch's order. A connection that closes
    /// takes only the requests not yet answered on it with it.
    private func send(
        _ batch: [(Spool.Position, [UInt8])], over pool: [ControlPlaneConnection], onConnection: [Int]
    ) async -> [Outcome] {
        let apiKey = configuration.apiKey
        return await withTaskGroup(of: (Int, Outcome).self) { group in
            for (index, entry) in batch.enumerated() {
                let connection = pool[onConnection[index]]
                group.addTask {
                    do {
                        return (index, .success(try await connection.post(path: "/v1/verdicts", json: entry.1, apiKey: apiKey)))
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            var results = [Outcome?](repeating: nil, count: batch.count)
            for await (index, outcome) in group { results[index] = outcome }
            return results.map { $0! }
        }
    }

    /// Records in the spool what the round finished, each on its own (setting aside the refused ones first, each
    /// fsynced in the dead-letter file before the spool records it done, so a crash of the machine cannot lose it
    /// from both): the done prefix of the batch is acknowledged, the records done behind one still to send are settled.
    /// A record whose dead-letter line could not be written is not done: it stays in the spool, in `unwritten`.
    private func settle(
        _ round: DeliveryRound, batch: [(Spool.Position, [UInt8])], answers: [Outcome],
        unwritten: inout [Spool.Position: SetAside]
    ) {
        var fates = round.fates
        for (index, fate) in round.fates.enumerated() {
            let response: ControlPlaneResponse? = if case .success(let response) = answers[index] { response } else { nil }
            let entry: SetAside
            switch fate {
            case .rejected:
                configuration.metrics?.deliveryRejected()
                entry = SetAside(batch[index].1, response: response, reason: "rejected")
            case .failedRepeatedly:
                let timedOut = if case .failure(let error) = answers[index] { error is ControlPlaneTimeout } else { false }
                entry = SetAside(batch[index].1, response: response, reason: "failed_repeatedly", timedOut: timedOut)
            case .accepted, .retry: continue
            }
            if !deadLetter(entry) {
                unwritten[batch[index].0] = entry
                fates[index] = .retry
            }
        }
        let done = fates.firstIndex(of: .retry) ?? fates.count
        spoolBox.withLock { spool in
            guard let spool else { return }
            for index in done..<batch.count where fates[index] != .retry {
                spool.settle(batch[index].0)
            }
            if done > 0 { spool.acknowledge(through: batch[done - 1].0) }
            // Records the cap dropped while they were in flight count as lost only if they were not accepted.
            spool.release()
            recordDrops(in: spool)
            Self.reportCorrupted(in: spool, configuration: configuration, logger: logger)
        }
    }

    /// A record the control plane will not take, with its answer, as a line of the dead-letter file: `reason` is
    /// rejected (400, 413, 422) or failed_repeatedly (an error answer, a dropped connection or no answer in time every
    /// time, while it accepted others; status 0 when there was no answer, `timedOut` when the last attempt had none in
    /// time).
    private struct SetAside {
        var line: [UInt8]
        var reason: String
        var status: Int

        init(_ record: [UInt8], response: ControlPlaneResponse?, reason: String, timedOut: Bool = false) {
            var json = JSONWriter()
            json.beginObject()
            json.field("reason", reason)
            if let response {
                json.field("status", response.status)
                json.field("answer", response.body)
            } else {
                json.field("status", 0)
                json.field(
                    "answer",
                    timedOut
                        ? "no answer: the control plane did not answer in time"
                        : "no answer: the control plane closed the connection")
            }
            json.field("action", String(decoding: record, as: UTF8.self))
            json.endObject()
            line = json.take()
            line.append(UInt8(ascii: "\n"))
            self.reason = reason
            status = response?.status ?? 0
        }
    }

    /// Sets a record aside: writes its line to the dead-letter file (fsynced); whether it was written. Set aside, it is
    /// counted in `actions_dropped_total{stage="dead_letter"}`. Not written (a full disk, an I/O error, no
    /// permission), it is neither counted nor done: the caller keeps it in the spool and tries again. Each is logged
    /// at most once a minute, with the count since.
    private func deadLetter(_ entry: SetAside) -> Bool {
        let file = DeadLetterFile(directory: configuration.spoolDirectory, maxBytes: configuration.deadLetterMaxBytes)
        if let failure = file.append(entry.line) {
            if let count = deadLetterWriteLog.withLock({ $0.note() }) {
                logger.error(
                    "cannot write the dead-letter file \(file.path): an action the control plane will not take is kept in the spool, not dropped, and setting it aside is tried again at the next delivery round (logged at most once a minute, with the count)",
                    metadata: [
                        "error": "\(FileIO.reason(failure))", "status": "\(entry.status)", "reason": "\(entry.reason)",
                        "actions": "\(count)",
                    ]
                )
            }
            return false
        }
        configuration.metrics?.dropped(1, stage: "dead_letter")
        guard let count = deadLetterLog.withLock({ $0.note() }) else { return true }
        logger.error(
            entry.reason == "rejected"
                ? "the control plane rejected an action; it is set aside in \(file.path) (logged at most once a minute, with the count)"
                : "the control plane failed an action \(DeliveryRound.failedAttempts) times while accepting others (error answers, dropped connections or no answer in time); it is set aside in \(file.path) (logged at most once a minute, with the count)",
            metadata: ["status": "\(entry.status)", "reason": "\(entry.reason)", "actions": "\(count)"]
        )
        return true
    }

    /// Tries again to set aside the records whose dead-letter line could not be written, oldest first; each one
    /// written is done in the spool. One that the spool's cap dropped meanwhile (counted there) is forgotten.
    private func retrySetAside(_ unwritten: inout [Spool.Position: SetAside]) {
        for position in unwritten.keys.sorted() {
            let front = spoolBox.withLock { $0?.front }
            if let front, position <= front {
                unwritten[position] = nil
                continue
            }
            guard let entry = unwritten[position], deadLetter(entry) else { return }  // still failing: later
            unwritten[position] = nil
            spoolBox.withLock { spool in
                guard let spool else { return }
                spool.release()
                spool.settle(position)
                spool.acknowledge(through: spool.front)  // moves the read position over it when it was the oldest
            }
        }
    }

    /// How long to wait, with nothing else to send, before trying again to write dead-letter lines that failed
    /// `retries` times in a row: 1 s, doubling, up to `backoffCap`.
    private func retryDelay(_ retries: Int) -> Duration {
        min(configuration.backoffCap, .seconds(1) * (1 << min(retries, 10)))
    }

    /// Returns once the spool writer adds something, or after `duration` (or at shutdown).
    private func waitForSpooled(atMost duration: Duration) async {
        let timer = Task { [spooled] in
            guard (try? await Task.sleep(for: duration)) != nil else { return }
            spooled.wake()
        }
        await spooled.waitForItems()
        timer.cancel()
    }

    /// Actions not yet accepted by the control plane (in memory and in the spool) and the spool's size on disk.
    public var backlog: (actions: Int, spoolBytes: Int64) {
        let (records, bytes) = spoolBox.withLock { ($0?.pendingRecords ?? 0, $0?.totalBytes ?? 0) }
        return (records + queue.count, bytes)
    }

    /// Whether one pass of the spool writer has run for more than 30 seconds (a disk that does not answer), or every
    /// write to the spool has failed for 30 seconds (a full disk): actions are not being kept, which a
    /// control-plane outage never causes.
    public var isWedged: Bool {
        let stuck = spoolPassStarted.withLock { started in started.map { ContinuousClock.now - $0 > .seconds(30) } ?? false }
        let failing = writeFailingSince.withLock { since in since.map { ContinuousClock.now - $0 > .seconds(30) } ?? false }
        return stuck || failing
    }

    private func pendingCount() -> Int { backlog.actions }

    /// Exponential backoff with full jitter: a random wait up to min(cap, base × 2^failures).
    private func backoff(_ failures: Int) -> Duration {
        let base = Double(configuration.backoffBase.components.seconds) + Double(configuration.backoffBase.components.attoseconds) / 1e18
        let cap = Double(configuration.backoffCap.components.seconds)
        let ceiling = min(cap, base * pow(2, Double(min(failures, 20))))
        return .milliseconds(Int64(Double.random(in: 0...ceiling) * 1000))
    }

    static func retryAfter(_ response: ControlPlaneResponse) -> Duration? {
        guard response.status == 429 || response.status == 503, let value = response.retryAfter,
            let seconds = Int(value.filter { !$0.isWhitespace }), seconds >= 0
        else { return nil }
        return .seconds(min(seconds, 300))
    }

    /// Sleeps for a backoff, cut short by shutdown (the spool writer keeps spooling meanwhile).
    private func pause(_ duration: Duration) async {
        let deadline = ContinuousClock.now + duration
        while !isFinished, ContinuousClock.now < deadline {
            try? await Task.sleep(for: min(.milliseconds(100), deadline - ContinuousClock.now))
        }
    }
}

import Foundation
import TestSupport
import Testing

/// The proxy binary reporting to a mock control plane: delivery, an outage, and a kill -9.
@Suite(.serialized) struct ReporterTests {
    let mocks = ControlPlaneConnectionTests()

    func environment(_ pki: TestPKI, controlPlanePort: Int, spool: String) -> [String: String] {
        var environment = ProxyEnvironment.make()
        environment["KAIZEN_API_KEY"] = ControlPlaneConnectionTests.key
        environment["KAIZEN_API_URL"] = "https://localhost:\(controlPlanePort)"
        environment["KAIZEN_API_CA_FILE"] = pki.caCertificate
        environment["KAIZEN_SPOOL_DIR"] = spool
        environment["KAIZEN_LOCAL"] = "1"  // to read the event ids
        return environment
    }

    /// Starts the proxy and makes `count` connections through it (each to a closed port: one action each).
    func runProxy(_ environment: [String: String], connections count: Int) throws -> (ChildProcess, [String]) {
        let proxy = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: environment)
        let port = try proxy.listeningPort()
        let closed = try FreePort.refusing()
        for _ in 0..<count {
            _ = try runCommand(Paths.which("curl"), ["-s", "--max-time", "10", "-x", "http://127.0.0.1:\(port)", "http://127.0.0.1:\(closed)/"])
        }
        // Each action line is written shortly after its connection: wait for all of them.
        let ids = try proxy.waitForLines(count: count, timeout: 30) { $0.contains("\"action\"") }.compactMap { line in
            line.components(separatedBy: "\"event_id\":\"").dropFirst().first.map { String($0.prefix(36)) }
        }
        #expect(ids.count == count)
        return (proxy, ids)
    }

    func waitForDelivery(_ ids: [String], at mock: ChildProcess) throws {
        let wanted = Set(ids)
        // Every id at least once (a resend after a lost answer is allowed: the event_id marks it).
        try mock.waitUntil(timeout: 60) { lines in
            wanted.isSubset(of: Set(lines.filter { $0.hasPrefix("RECEIVED") }.map { String($0.split(separator: " ").last ?? "") }))
        }
    }

    @Test func everyActionReachesTheControlPlane() throws {
        let pki = try TestPKI.mint()
        let (mock, port) = try mocks.startMock(pki)
        defer { withExtendedLifetime(mock) {} }
        let (proxy, ids) = try runProxy(environment(pki, controlPlanePort: port, spool: pki.directory + "/spool"), connections: 10)
        try waitForDelivery(ids, at: mock)
        #expect(Set(mock.stdoutLines.filter { $0.hasPrefix("RECEIVED") }.map { $0.split(separator: " ")[2] }).count == 10)
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
        #expect(!proxy.stderr.contains(ControlPlaneConnectionTests.key))
    }

    @Test func actionsMadeWhileTheControlPlaneIsDownArriveWhenItIsBack() throws {
        let pki = try TestPKI.mint()
        let port = try FreePort.closed()
        let (proxy, ids) = try runProxy(environment(pki, controlPlanePort: port, spool: pki.directory + "/spool"), connections: 20)
        _ = try proxy.waitForStderr(containing: "control plane unreachable", timeout: 20)
        let (mock, _) = try mocks.startMock(pki, port: port)
        defer { withExtendedLifetime(mock) {} }
        try waitForDelivery(ids, at: mock)
        _ = try proxy.waitForStderr(containing: "control plane reachable again", timeout: 20)
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    @Test func actionsSpooledBeforeAKill9AreDeliveredAfterARestart() throws {
        let pki = try TestPKI.mint()
        let port = try FreePort.closed()
        let spool = pki.directory + "/spool"
        var settings = environment(pki, controlPlanePort: port, spool: spool)
        settings["KAIZEN_LOG_LEVEL"] = "debug"  // the reporter logs each spool write
        let (proxy, ids) = try runProxy(settings, connections: 15)
        // Wait until every action is in the spool (the write-ahead log), then kill without warning.
        _ = try proxy.waitForStderr(containing: "spool.pending=15", timeout: 30)
        proxy.signal(SIGKILL)
        _ = try? proxy.waitForExit(timeout: 10)

        let (mock, _) = try mocks.startMock(pki, port: port)
        defer { withExtendedLifetime(mock) {} }
        let restarted = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: settings)
        try waitForDelivery(ids, at: mock)
        restarted.signal(SIGTERM)
        #expect(try restarted.waitForExit(timeout: 30) == 0)
    }

    @Test func aRevokedKeyLogsOnceKeepsTheActionsAndDeliversOnceFixed() throws {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        try "unauthorized".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, port) = try mocks.startMock(pki, modeFile: modeFile)
        defer { withExtendedLifetime(mock) {} }
        var settings = environment(pki, controlPlanePort: port, spool: pki.directory + "/spool")
        settings["KAIZEN_LOG_LEVEL"] = "info"
        let (proxy, ids) = try runProxy(settings, connections: 5)
        _ = try proxy.waitForStderr(containing: "refused the API key (HTTP 401)", timeout: 20)
        try "ok".write(toFile: modeFile, atomically: true, encoding: .utf8)
        try waitForDelivery(ids, at: mock)
        // One line each from the reporter and the policy fetch, not one per action or retry.
        let refusals = proxy.stderr.components(separatedBy: "refused the API key (HTTP 401); actions are kept").count - 1
        #expect(refusals == 1)
        let policyRefusals = proxy.stderr.components(separatedBy: "refused the API key for the policy").count - 1
        #expect(policyRefusals == 1)
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    @Test func aRejectedActionIsSetAsideAndTheRestDelivered() throws {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        let spool = pki.directory + "/spool"
        let port = try FreePort.closed()
        // Actions are made while the control plane is down, so the ones to reject are known before they are sent.
        let (proxy, ids) = try runProxy(environment(pki, controlPlanePort: port, spool: spool), connections: 6)
        try "reject \(ids[2]) \(ids[4])".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, _) = try mocks.startMock(pki, port: port, modeFile: modeFile)
        defer { withExtendedLifetime(mock) {} }
        try waitForDelivery(ids.enumerated().filter { $0.offset != 2 && $0.offset != 4 }.map(\.element), at: mock)
        _ = try mock.waitForLine(timeout: 30) { $0 == "REJECTED \(ids[2])" }
        _ = try mock.waitForLine(timeout: 30) { $0 == "REJECTED \(ids[4])" }
        _ = try proxy.waitForStderr(containing: "rejected an action", timeout: 20)
        // Counted as set aside and as rejected attempts, not as delivered; the control plane answered, so it is reachable.
        #expect(try metric(proxy, #"kaizen_egress_actions_dropped_total{stage="dead_letter"}"#, reaching: 2) == 2)
        #expect(try metric(proxy, #"kaizen_egress_delivery_failures_total{reason="rejected"}"#) == 2)
        #expect(try metric(proxy, "kaizen_egress_actions_delivered_total") == 4)
        #expect(try metric(proxy, "kaizen_egress_control_plane_reachable") == 1)
        let deadLetters = try String(contentsOfFile: spool + "/dead-letter.jsonl", encoding: .utf8)
        #expect(deadLetters.contains(ids[2]) && deadLetters.contains(ids[4]))
        #expect(deadLetters.contains("this action is invalid") && deadLetters.contains(#""reason":"rejected""#))
        #expect(!deadLetters.contains(ids[0]))
        // One line for both: at most one a minute.
        #expect(proxy.stderr.components(separatedBy: "rejected an action").count - 1 == 1)
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    @Test func retryAfterIsHonouredAndNothingIsLost() throws {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        try "unavailable 1".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, port) = try mocks.startMock(pki, modeFile: modeFile)
        defer { withExtendedLifetime(mock) {} }
        let (proxy, ids) = try runProxy(environment(pki, controlPlanePort: port, spool: pki.directory + "/spool"), connections: 5)
        _ = try proxy.waitForStderr(containing: "control plane unavailable (HTTP 503)", timeout: 20)
        try "ok".write(toFile: modeFile, atomically: true, encoding: .utf8)
        try waitForDelivery(ids, at: mock)
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    @Test func aThousandConnectionsWithAnOutageInTheMiddleLoseNothing() throws {
        let pki = try TestPKI.mint()
        let port = try FreePort.closed()
        let settings = environment(pki, controlPlanePort: port, spool: pki.directory + "/spool")
        let proxy = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: settings)
        let proxyPort = try proxy.listeningPort()
        let closed = try FreePort.refusing()
        var mock: ChildProcess? = nil
        for index in 0..<1000 {
            if index == 500 {  // the control plane comes up half way through
                mock = try mocks.startMock(pki, port: port).0
            }
            let socket = try RawSocket(host: "127.0.0.1", port: proxyPort)
            try socket.send("CONNECT 127.0.0.1:\(closed) HTTP/1.1\r\n\r\n")
            _ = try socket.receiveAll()
        }
        let ids = try proxy.waitForLines(count: 1000, timeout: 30) { $0.contains("\"action\"") }.compactMap { line in
            line.components(separatedBy: "\"event_id\":\"").dropFirst().first.map { String($0.prefix(36)) }
        }
        #expect(ids.count == 1000)
        let controlPlane = try #require(mock)
        try waitForDelivery(ids, at: controlPlane)
        #expect(Set(controlPlane.stdoutLines.filter { $0.hasPrefix("RECEIVED") }.map { $0.split(separator: " ")[2] }).count == 1000)
        // The backlog drained over several keep-alive connections side by side (the mock prints each one's port).
        let ports = Set(controlPlane.stdoutLines.filter { $0.hasPrefix("RECEIVED") }.map { $0.split(separator: " ")[1] })
        #expect(ports.count > 1 && ports.count <= 8, "\(ports.count) connections")
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    @Test func aFullSpoolSendsGapRecordsCountingExactlyWhatItDropped() throws {
        let pki = try TestPKI.mint()
        let port = try FreePort.closed()
        var settings = environment(pki, controlPlanePort: port, spool: pki.directory + "/spool")
        settings["KAIZEN_SPOOL_MAX_BYTES"] = "1M"  // the smallest cap: about 1,700 actions of this size
        let proxy = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: settings)
        let proxyPort = try proxy.listeningPort()
        let closed = try FreePort.refusing()
        // 3,000 plain-HTTP requests in one curl run (URL globbing), one action each, all refused upstream.
        let total = 3000
        _ = try runCommand(
            Paths.which("curl"),
            ["-s", "-o", "/dev/null", "--max-time", "120", "-x", "http://127.0.0.1:\(proxyPort)", "http://127.0.0.1:\(closed)/[1-\(total)]"],
            timeout: 150
        )
        let ids = try proxy.waitForLines(count: total, timeout: 60) { $0.contains("\"action\"") }.compactMap { line in
            line.components(separatedBy: "\"event_id\":\"").dropFirst().first.map { String($0.prefix(36)) }
        }
        #expect(ids.count == total)
        _ = try proxy.waitForStderr(containing: "the spool reached KAIZEN_SPOOL_MAX_BYTES", timeout: 30)

        let (mock, _) = try mocks.startMock(pki, port: port)
        defer { withExtendedLifetime(mock) {} }
        // Delivered + counted as dropped = every action, with no action both delivered and counted.
        func tally(_ lines: [String]) -> (received: Set<String>, dropped: Int) {
            let received = Set(lines.filter { $0.hasPrefix("RECEIVED") }.map { String($0.split(separator: " ")[2]) })
            let dropped = lines.filter { $0.hasPrefix("GAP") }.compactMap { Int($0.split(separator: " ")[2]) }.reduce(0, +)
            return (received, dropped)
        }
        try mock.waitUntil(timeout: 60) { lines in
            let (received, dropped) = tally(lines)
            return received.count + dropped >= total
        }
        let (received, dropped) = tally(mock.stdoutLines)
        #expect(received.isSubset(of: Set(ids)))
        #expect(dropped > 0 && received.count + dropped == total, "received \(received.count), dropped \(dropped)")
        // The oldest were dropped: the newest action arrived, the first did not.
        #expect(received.contains(ids[total - 1]) && !received.contains(ids[0]))
        let gap = try #require(mock.stdoutLines.first { $0.hasPrefix("GAP") }).split(separator: " ")
        #expect(gap.count == 5 && gap[3].hasPrefix("20") && gap[4].hasPrefix("20"))
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    @Test func aSlowControlPlaneNeverHoldsUpConnections() throws {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        try "slow".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, port) = try mocks.startMock(pki, modeFile: modeFile)
        defer { withExtendedLifetime(mock) {} }
        // While the control plane holds every request, 20 connections still each get their answer (runProxy's
        // curl gives each 10 s) and their actions are recorded.
        let (proxy, ids) = try runProxy(environment(pki, controlPlanePort: port, spool: pki.directory + "/spool"), connections: 20)
        _ = try mock.waitForLine(timeout: 20) { $0.hasPrefix("HOLDING") }
        #expect(mock.stdoutLines.filter { $0.hasPrefix("RECEIVED") }.isEmpty)
        try "ok".write(toFile: modeFile, atomically: true, encoding: .utf8)
        try waitForDelivery(ids, at: mock)
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    /// `kaizen_egress_…` series from the proxy's admin listener.
    func metric(_ proxy: ChildProcess, _ series: String) throws -> Double? {
        let admin = try proxy.adminPort()
        let result = try runCommand(Paths.which("curl"), ["-sS", "--max-time", "10", "http://127.0.0.1:\(admin)/metrics"])
        #expect(result.status == 0, "\(result.stderr)")
        return AdminTests.value(result.stdout, series)
    }

    /// The series once it reads `value`, or its last reading after 4 s. The reporter's bookkeeping follows the control
    /// plane's answer by a moment, and a metric has no event to wait on: it is read again every 100 ms, 40 times at most.
    func metric(_ proxy: ChildProcess, _ series: String, reaching value: Double) throws -> Double? {
        var reading: Double? = nil
        for _ in 0..<40 {
            reading = try metric(proxy, series)
            if reading == value { break }
            usleep(100_000)
        }
        return reading
    }

    /// A control plane that closes the connection after every answer (HTTP/1.0 style, a keep-alive limit of
    /// one): each answered request is acknowledged, the rest sent again on a new connection, nothing stalls.
    @Test func aControlPlaneThatClosesAfterEachAnswerStillGetsEveryActionOnce() throws {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        try "close".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let port = try FreePort.closed()
        // Made while the control plane is down, so they go as one pipelined batch when it is up.
        let (proxy, ids) = try runProxy(environment(pki, controlPlanePort: port, spool: pki.directory + "/spool"), connections: 10)
        let (mock, _) = try mocks.startMock(pki, port: port, modeFile: modeFile)
        defer { withExtendedLifetime(mock) {} }
        try waitForDelivery(ids, at: mock)
        // At most the first answer again (a reset behind it may lose it); every later one is sent once.
        let received = mock.stdoutLines.filter { $0.hasPrefix("RECEIVED") }.count
        #expect(received <= ids.count + 1, "\(received) requests for \(ids.count) actions")
        #expect(try metric(proxy, "kaizen_egress_actions_delivered_total", reaching: Double(ids.count)) == Double(ids.count))
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    /// One action the control plane answers 500 every time: the others are accepted each once, never resent
    /// behind it; while the control plane accepts others it is tried a bounded number of times, then set aside.
    @Test func anActionTheControlPlaneKeepsFailingHoldsUpNothingAndIsSetAside() throws {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        let spool = pki.directory + "/spool"
        let port = try FreePort.closed()
        let (proxy, ids) = try runProxy(environment(pki, controlPlanePort: port, spool: spool), connections: 6)
        let poison = ids[2]
        try "fail 500 \(poison)".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, _) = try mocks.startMock(pki, port: port, modeFile: modeFile)
        defer { withExtendedLifetime(mock) {} }
        try waitForDelivery(ids.filter { $0 != poison }, at: mock)
        _ = try mock.waitForLine(timeout: 30) { $0 == "FAILED 500 \(poison)" }
        func receivedCount() -> Int { mock.stdoutLines.filter { $0.hasPrefix("RECEIVED") }.count }
        // Each accepted action once: none was sent again behind the failing one.
        #expect(receivedCount() == ids.count - 1, "\(mock.stdoutLines)")

        // New actions: each round the control plane accepts one of them counts against the failing action.
        let proxyPort = try proxy.listeningPort()
        let closed = try FreePort.refusing()
        let deadLetter = spool + "/dead-letter.jsonl"
        let setAside = "failed an action 5 times while accepting others"
        var more = 0
        while more < 8 {
            let before = receivedCount()
            _ = try runCommand(Paths.which("curl"), ["-s", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "http://127.0.0.1:\(closed)/"])
            try mock.waitUntil(timeout: 30) { $0.filter { $0.hasPrefix("RECEIVED") }.count > before }
            more += 1
            if (try? proxy.waitForStderr(containing: setAside, timeout: 2)) != nil { break }
        }
        #expect(proxy.stderr.contains(setAside))
        // The first round counted once; four more make five (a fifth if the first round sent it alone).
        #expect(more == 4 || more == 5, "set aside after \(more) more rounds")
        let letters = try String(contentsOfFile: deadLetter, encoding: .utf8)
        #expect(letters.contains(poison) && letters.contains("\"status\":500") && letters.contains("failed_repeatedly"))
        #expect(receivedCount() == ids.count - 1 + more)
        #expect(!letters.contains(ControlPlaneConnectionTests.key) && !proxy.stderr.contains(ControlPlaneConnectionTests.key))
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    /// The control plane refusing one action with 403 while it accepts the others (a per-record refusal, not a
    /// revoked key): as docs/operations.md promises, the others are each delivered once and never held up; the
    /// refused one counts one failed attempt per round in which others are accepted, and the fifth sets it aside in
    /// `dead-letter.jsonl` with the answer, logged, counted as dropped (`stage="dead_letter"`) and never as
    /// delivered, the 403s counted as `unauthorized` delivery failures, and the control plane left reachable. Once
    /// set aside it is not sent again.
    @Test func anActionRefusedWith403IsSetAsideLoggedAndCountedAndTheRestDelivered() throws {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        let spool = pki.directory + "/spool"
        let port = try FreePort.closed()
        // Made while the control plane is down, so the action to refuse is known before anything is sent.
        let (proxy, ids) = try runProxy(environment(pki, controlPlanePort: port, spool: spool), connections: 6)
        let refused = ids[2]
        try "fail 403 \(refused)".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, _) = try mocks.startMock(pki, port: port, modeFile: modeFile)
        defer { withExtendedLifetime(mock) {} }
        try waitForDelivery(ids.filter { $0 != refused }, at: mock)
        _ = try mock.waitForLine(timeout: 30) { $0 == "FAILED 403 \(refused)" }
        func received() -> [String] { mock.stdoutLines.filter { $0.hasPrefix("RECEIVED") }.map { String($0.split(separator: " ")[2]) } }
        func refusals() -> Int { mock.stdoutLines.filter { $0 == "FAILED 403 \(refused)" }.count }

        // Each new action is a round in which the control plane accepts another: it counts against the refused one.
        let proxyPort = try proxy.listeningPort()
        let closed = try FreePort.refusing()
        let setAside = "failed an action 5 times while accepting others"
        let fifth = 5.0  // docs/operations.md: the fifth failed attempt while others are accepted sets it aside
        var more = 0
        while more < 8 {
            let before = received().count
            _ = try runCommand(Paths.which("curl"), ["-s", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "http://127.0.0.1:\(closed)/"])
            try mock.waitUntil(timeout: 30) { $0.filter { $0.hasPrefix("RECEIVED") }.count > before }
            more += 1
            if (try? proxy.waitForStderr(containing: setAside, timeout: 2)) != nil { break }
        }
        #expect(proxy.stderr.contains(setAside), "\(proxy.stderr)")
        #expect(more == 4 || more == 5, "set aside after \(more) more rounds")
        #expect(Double(refusals()) >= fifth, "\(refusals()) refusals")

        // Set aside in the dead-letter file with the control plane's answer; no other action with it.
        let letters = try String(contentsOfFile: spool + "/dead-letter.jsonl", encoding: .utf8)
        let lines = letters.split(separator: "\n")
        #expect(lines.count == 1 && letters.contains(refused), "\(letters)")
        #expect(letters.contains(#""reason":"failed_repeatedly""#) && letters.contains(#""status":403"#))
        #expect(letters.contains("cannot take this one"))
        // The others delivered, each once, and the refused one never accepted.
        let delivered = received()
        #expect(Set(delivered).count == delivered.count && delivered.count == ids.count - 1 + more, "\(delivered.count)")
        #expect(!delivered.contains(refused))
        // Counted: set aside (not delivered), every refusal a failed attempt; one action's 403 is no refused key.
        #expect(try metric(proxy, #"kaizen_egress_actions_dropped_total{stage="dead_letter"}"#, reaching: 1) == 1)
        #expect(try metric(proxy, "kaizen_egress_actions_delivered_total", reaching: Double(delivered.count)) == Double(delivered.count))
        let unauthorized = try #require(try metric(proxy, #"kaizen_egress_delivery_failures_total{reason="unauthorized"}"#))
        #expect(unauthorized >= fifth, "\(unauthorized)")
        #expect(try metric(proxy, "kaizen_egress_control_plane_reachable", reaching: 1) == 1)

        // Never sent again: the next action is delivered, and the refused one is not tried with it.
        let attempts = refusals()
        let before = received().count
        _ = try runCommand(Paths.which("curl"), ["-s", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "http://127.0.0.1:\(closed)/"])
        try mock.waitUntil(timeout: 30) { $0.filter { $0.hasPrefix("RECEIVED") }.count > before }
        #expect(refusals() == attempts)
        #expect(proxy.stderr.components(separatedBy: setAside).count - 1 == 1, "one line a minute")
        #expect(!letters.contains(ControlPlaneConnectionTests.key) && !proxy.stderr.contains(ControlPlaneConnectionTests.key))
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    /// Three actions made while the control plane is down, a directory where the dead-letter file goes (no write gets
    /// past it, root's included), then a control plane that rejects the second action and accepts the others, which
    /// are delivered before this returns.
    struct UnwritableDeadLetter {
        let settings: [String: String]
        let spool: String
        let deadLetter: String
        let proxy: ChildProcess
        let ids: [String]
        let refused: String
        let mock: ChildProcess
    }

    func rejectedWithUnwritableDeadLetter() throws -> UnwritableDeadLetter {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        let spool = pki.directory + "/spool"
        let port = try FreePort.closed()
        let settings = environment(pki, controlPlanePort: port, spool: spool)
        let (proxy, ids) = try runProxy(settings, connections: 3)
        let refused = ids[1]
        let deadLetter = spool + "/dead-letter.jsonl"
        try FileManager.default.createDirectory(atPath: deadLetter, withIntermediateDirectories: false)
        try "reject \(refused)".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, _) = try mocks.startMock(pki, port: port, modeFile: modeFile)
        try waitForDelivery(ids.filter { $0 != refused }, at: mock)
        return UnwritableDeadLetter(
            settings: settings, spool: spool, deadLetter: deadLetter, proxy: proxy, ids: ids, refused: refused, mock: mock)
    }

    /// An action the control plane rejects while the dead-letter file cannot be written (here a directory stands
    /// where it goes, which no write gets past, root's included) is not lost: it stays in the spool, is not counted as
    /// dropped, and one line says so; once the file can be written it is set aside without being sent again.
    @Test func anActionThatCannotBeSetAsideStaysInTheSpoolUntilItCanBe() throws {
        let setup = try rejectedWithUnwritableDeadLetter()
        defer { withExtendedLifetime(setup) {} }  // the mock control plane lives as long as the test
        let (spool, deadLetter, proxy, refused, mock) = (setup.spool, setup.deadLetter, setup.proxy, setup.refused, setup.mock)
        _ = try mock.waitForLine(timeout: 30) { $0 == "REJECTED \(refused)" }
        let cannotWrite = "cannot write the dead-letter file \(deadLetter): an action the control plane will not take is kept in the spool"
        _ = try? proxy.waitForStderr(containing: cannotWrite, timeout: 30)
        #expect(proxy.stderr.contains(cannotWrite), "\(proxy.stderr)")
        #expect(proxy.stderr.contains("error=Is a directory"))
        // Kept: still waiting in the spool, not counted as set aside (dropped), not reported as set aside.
        // (The depth counts the segment being read whole, so the action delivered before it counts too.)
        #expect((try metric(proxy, "kaizen_egress_reporter_queue_depth") ?? 0) >= 1)
        #expect(try metric(proxy, #"kaizen_egress_actions_dropped_total{stage="dead_letter"}"#) == 0)
        #expect(!proxy.stderr.contains("rejected an action; it is set aside"))
        func spooled(_ id: String) throws -> Bool {
            try FileManager.default.contentsOfDirectory(atPath: spool).filter { $0.hasPrefix("segment-") }.contains { name in
                String(decoding: try Data(contentsOf: URL(fileURLWithPath: spool + "/" + name)), as: UTF8.self).contains(id)
            }
        }
        #expect(try spooled(refused))

        // The file can be written again: the action is set aside (with the control plane's answer), counted, and
        // gone from the spool, without another request.
        try FileManager.default.removeItem(atPath: deadLetter)
        _ = try? proxy.waitForStderr(containing: "rejected an action; it is set aside", timeout: 60)
        let letters = (try? String(contentsOfFile: deadLetter, encoding: .utf8)) ?? ""
        #expect(letters.split(separator: "\n").count == 1 && letters.contains(refused), "\(letters)")
        #expect(letters.contains(#""reason":"rejected""#) && letters.contains("this action is invalid"))
        #expect(try metric(proxy, #"kaizen_egress_actions_dropped_total{stage="dead_letter"}"#, reaching: 1) == 1)
        #expect(try metric(proxy, "kaizen_egress_reporter_queue_depth", reaching: 0) == 0)
        #expect(mock.stdoutLines.filter { $0 == "REJECTED \(refused)" }.count == 1)
        #expect(proxy.stderr.components(separatedBy: cannotWrite).count - 1 == 1, "one line a minute")
        #expect(!letters.contains(ControlPlaneConnectionTests.key) && !proxy.stderr.contains(ControlPlaneConnectionTests.key))
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    /// The action kept in the spool because its dead-letter line could not be written survives a kill -9: the
    /// next run sends it again, and once the control plane refuses it again it is set aside.
    @Test func anActionThatCannotBeSetAsideSurvivesAKill9() throws {
        let setup = try rejectedWithUnwritableDeadLetter()
        defer { withExtendedLifetime(setup) {} }  // the mock control plane lives as long as the test
        let (settings, deadLetter, proxy, ids, refused, mock) =
            (setup.settings, setup.deadLetter, setup.proxy, setup.ids, setup.refused, setup.mock)
        _ = try? proxy.waitForStderr(containing: "cannot write the dead-letter file", timeout: 30)
        #expect(proxy.stderr.contains("cannot write the dead-letter file"))
        // Counted once the round is recorded in the spool (the others done), so the kill comes after that.
        #expect(try metric(proxy, "kaizen_egress_actions_delivered_total", reaching: 2) == 2)
        proxy.signal(SIGKILL)
        _ = try? proxy.waitForExit(timeout: 10)

        try FileManager.default.removeItem(atPath: deadLetter)
        let restarted = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: settings)
        _ = try? restarted.waitForStderr(containing: "rejected an action; it is set aside", timeout: 30)
        #expect(mock.stdoutLines.filter { $0 == "REJECTED \(refused)" }.count == 2)
        let letters = (try? String(contentsOfFile: deadLetter, encoding: .utf8)) ?? ""
        #expect(letters.split(separator: "\n").count == 1 && letters.contains(refused), "\(letters)")
        // Only the kept one was sent again: those accepted before the kill are done.
        let received = mock.stdoutLines.filter { $0.hasPrefix("RECEIVED") }
        #expect(received.count == ids.count - 1, "\(received)")
        restarted.signal(SIGTERM)
        #expect(try restarted.waitForExit(timeout: 30) == 0)
    }

    /// One action the control plane never answers (it holds the request until the timeout), while it accepts the
    /// others: the actions pipelined behind it on its connection get no answer either, but none of them is blamed or
    /// set aside; they are delivered, each once, when the next round sends each request alone. The one that hangs
    /// counts a failed attempt each time it times out alone while others are accepted, and the fifth sets it aside
    /// (`did not answer in time`), so it does not hold up the queue for good.
    @Test func anActionTheControlPlaneHangsOnIsSetAsideAndNothingElseWithIt() throws {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        let spool = pki.directory + "/spool"
        let port = try FreePort.closed()
        var settings = environment(pki, controlPlanePort: port, spool: spool)
        // Well above how long a loaded machine's mock takes to answer normally: only the hung request times out.
        settings["KAIZEN_DELIVERY_TIMEOUT"] = "3s"
        // Made while the control plane is down: they go as one pipelined batch, the hung one third.
        let (proxy, ids) = try runProxy(settings, connections: 6)
        let hung = ids[2]
        try "hang \(hung)".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, _) = try mocks.startMock(pki, port: port, modeFile: modeFile)
        defer {
            try? "ok".write(toFile: modeFile, atomically: true, encoding: .utf8)  // lets the held requests go
            withExtendedLifetime(mock) {}
        }
        // The ones pipelined behind it are not held up for good: the next round sends them alone.
        try waitForDelivery(ids.filter { $0 != hung }, at: mock)
        func received() -> [String] { mock.stdoutLines.filter { $0.hasPrefix("RECEIVED") }.map { String($0.split(separator: " ")[2]) } }
        func hangs(_ lines: [String]) -> Int { lines.filter { $0 == "HUNG \(hung)" }.count }

        let proxyPort = try proxy.listeningPort()
        let closed = try FreePort.refusing()
        let setAside = "failed an action 5 times while accepting others"
        var more = 0
        while more < 8 {
            let before = received().count
            let sent = hangs(mock.stdoutLines)
            _ = try runCommand(Paths.which("curl"), ["-s", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "http://127.0.0.1:\(closed)/"])
            try mock.waitUntil(timeout: 30) { $0.filter { $0.hasPrefix("RECEIVED") }.count > before }
            more += 1
            // The round that took the new action ends either with the hung one set aside, or with the round after
            // it sending the hung one again (the mock sees it twice more: in that round and in the next).
            var setAsideNow = false
            for _ in 0..<120 {
                if (try? proxy.waitForStderr(containing: setAside, timeout: 0.25)) != nil {
                    setAsideNow = true
                    break
                }
                if (try? mock.waitUntil(timeout: 0.25, { hangs($0) >= sent + 2 })) != nil { break }
            }
            if setAsideNow { break }
        }
        #expect(proxy.stderr.contains(setAside), "\(proxy.stderr)")
        // The log says what happens while it is looked for, once: a delivery timed out, actions go one at a time.
        // Never that the control plane is unreachable (but for the outage before the mock started) or the key refused.
        let isolating =
            "a delivery to the control plane timed out (no answer within KAIZEN_DELIVERY_TIMEOUT) while it answers others: actions are sent one at a time, one request per connection, to find the one it does not answer"
        let log = proxy.stderr
        #expect(log.components(separatedBy: isolating).count - 1 == 1, "\(log)")
        let sinceBack = log.components(separatedBy: "control plane reachable again").dropFirst().joined()
        #expect(!sinceBack.isEmpty && !sinceBack.contains("control plane unreachable"), "\(log)")
        #expect(!log.contains("refused the API key") && !log.contains(ControlPlaneConnectionTests.key))
        // Five failed attempts, each a send the control plane hung on (the pipelined ones blamed nothing, so there may
        // be more sends than attempts). How many new actions that took depends on how many rounds the proxy ran on
        // its own meanwhile (others accepted in them make an attempt count), so only an upper bound is asserted.
        #expect(hangs(mock.stdoutLines) >= 5, "\(mock.stdoutLines.filter { $0.hasPrefix("HUNG") })")
        #expect(more <= 6, "set aside after \(more) more rounds")
        let letters = try String(contentsOfFile: spool + "/dead-letter.jsonl", encoding: .utf8)
        #expect(letters.split(separator: "\n").count == 1 && letters.contains(hung), "\(letters)")
        #expect(letters.contains("did not answer in time") && letters.contains(#""status":0"#))
        let delivered = received()
        // Those pipelined behind it each once (never blamed, never sent twice); each new action delivered.
        for id in ids where id != hung { #expect(delivered.filter { $0 == id }.count == 1, "\(id): \(delivered)") }
        #expect(Set(delivered).count == ids.count - 1 + more, "\(delivered)")
        #expect(!delivered.contains(hung))
        #expect(try metric(proxy, #"kaizen_egress_actions_dropped_total{stage="dead_letter"}"#, reaching: 1) == 1)
        #expect(try metric(proxy, "kaizen_egress_control_plane_reachable", reaching: 1) == 1)
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    /// Actions the control plane accepted behind one it has not (done out of order) are not sent again by the next
    /// run: only the one still to send is.
    @Test func actionsAcceptedOutOfOrderAreNotSentAgainAfterARestart() throws {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        let port = try FreePort.closed()
        let settings = environment(pki, controlPlanePort: port, spool: pki.directory + "/spool")
        let (proxy, ids) = try runProxy(settings, connections: 6)
        let held = ids[0]  // the oldest: every other one is accepted behind it
        try "fail 503 \(held)".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, _) = try mocks.startMock(pki, port: port, modeFile: modeFile)
        defer { withExtendedLifetime(mock) {} }
        try waitForDelivery(Array(ids.dropFirst()), at: mock)
        #expect(try metric(proxy, "kaizen_egress_actions_delivered_total", reaching: 5) == 5)
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)

        try "ok".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let restarted = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: settings)
        try waitForDelivery([held], at: mock)
        #expect(try metric(restarted, "kaizen_egress_reporter_queue_depth", reaching: 0) == 0)
        let received = mock.stdoutLines.filter { $0.hasPrefix("RECEIVED") }.map { String($0.split(separator: " ")[2]) }
        #expect(received.sorted() == ids.sorted(), "each once: \(received)")
        restarted.signal(SIGTERM)
        #expect(try restarted.waitForExit(timeout: 30) == 0)
    }

    /// Two proxies on one KAIZEN_SPOOL_DIR would delete each other's segments: the second refuses to start,
    /// naming the variable and the fix, and the first goes on delivering.
    @Test func aSecondProxyOnTheSameSpoolDirectoryRefusesToStart() throws {
        let pki = try TestPKI.mint()
        let (mock, port) = try mocks.startMock(pki)
        defer { withExtendedLifetime(mock) {} }
        let settings = environment(pki, controlPlanePort: port, spool: pki.directory + "/spool")
        let first = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: settings)
        _ = try first.listeningPort()
        let second = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: settings)
        #expect(try second.waitForExit(timeout: 30) == 2)
        #expect(second.stderr.contains("KAIZEN_SPOOL_DIR: \(pki.directory)/spool is used by another kaizen-egress process"), "\(second.stderr)")
        #expect(second.stderr.contains("give each proxy its own KAIZEN_SPOOL_DIR"))
        first.signal(SIGTERM)
        #expect(try first.waitForExit(timeout: 30) == 0)
        // Once the first has stopped, the directory is free again.
        let third = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: settings)
        _ = try third.listeningPort()
        third.signal(SIGTERM)
        #expect(try third.waitForExit(timeout: 30) == 0)
    }

    /// A control plane that holds every request does not hold up shutdown past the drain: the request in flight is
    /// cancelled after a short grace, its action stays in the spool and is sent by the next run.
    @Test func shutdownDoesNotWaitForASlowControlPlane() throws {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        try "slow".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, port) = try mocks.startMock(pki, modeFile: modeFile)
        defer { withExtendedLifetime(mock) {} }
        var settings = environment(pki, controlPlanePort: port, spool: pki.directory + "/spool")
        settings["KAIZEN_DRAIN_SECONDS"] = "1"
        let (proxy, ids) = try runProxy(settings, connections: 1)
        _ = try mock.waitForLine(timeout: 20) { $0 == "HOLDING \(ids[0])" }
        let stopping = Date()
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
        let took = Date().timeIntervalSince(stopping)
        // The drain (1 s) and the grace (2 s), not the request's 30-second timeout.
        #expect(took < 8, "shutdown took \(took) s")
        #expect(proxy.stderr.contains("still unanswered at shutdown are cancelled"))

        try "ok".write(toFile: modeFile, atomically: true, encoding: .utf8)  // the held request is answered into the void
        let restarted = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: settings)
        // Sent again by the next run: it was never acknowledged.
        try mock.waitUntil(timeout: 60) { lines in lines.filter { $0.hasPrefix("RECEIVED") && $0.hasSuffix(ids[0]) }.count >= 2 }
        restarted.signal(SIGTERM)
        #expect(try restarted.waitForExit(timeout: 30) == 0)
    }

    /// A full disk under the spool: the actions that cannot be written are counted, logged once, and reported in a
    /// gap record once the spool can be written again. (A small tmpfs: needs root, skipped otherwise.)
    @Test(.enabled(if: getuid() == 0, "mounts a small tmpfs"))
    func aFullDiskLosesActionsCountedAndReported() throws {
        let pki = try TestPKI.mint()
        let spool = pki.directory + "/spool"
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
        guard try runCommand("/bin/mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", spool]).status == 0 else {
            Issue.record("cannot mount a tmpfs")
            return
        }
        defer { _ = try? runCommand("/bin/umount", ["-l", spool]) }
        let port = try FreePort.closed()
        var settings = environment(pki, controlPlanePort: port, spool: spool)
        settings["KAIZEN_SPOOL_MAX_BYTES"] = "1M"
        let proxy = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: settings)
        let proxyPort = try proxy.listeningPort()
        let closed = try FreePort.refusing()
        let total = 300  // about 180 KB of actions for 64 KB of disk
        _ = try runCommand(
            Paths.which("curl"),
            ["-s", "-o", "/dev/null", "--max-time", "60", "-x", "http://127.0.0.1:\(proxyPort)", "http://127.0.0.1:\(closed)/[1-\(total)]"],
            timeout: 90)
        _ = try proxy.waitForLines(count: total, timeout: 60) { $0.contains("\"action\"") }
        _ = try proxy.waitForStderr(containing: "cannot write the spool in KAIZEN_SPOOL_DIR", timeout: 30)
        let lost = try #require(try metric(proxy, #"kaizen_egress_actions_dropped_total{stage="disk"}"#))
        #expect(lost > 0)
        #expect(proxy.stderr.components(separatedBy: "cannot write the spool").count - 1 == 1, "one line a minute")

        // Room again: the next action is written, and a gap record with it.
        #expect(try runCommand("/bin/mount", ["-o", "remount,size=8m", spool]).status == 0)
        _ = try runCommand(Paths.which("curl"), ["-s", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "http://127.0.0.1:\(closed)/"])
        _ = try proxy.waitForStderr(containing: "the spool takes writes again", timeout: 30)
        let (mock, _) = try mocks.startMock(pki, port: port)
        defer { withExtendedLifetime(mock) {} }
        func tally(_ lines: [String]) -> (received: Int, gaps: Int) {
            (lines.filter { $0.hasPrefix("RECEIVED") }.count,
             lines.filter { $0.hasPrefix("GAP") }.compactMap { Int($0.split(separator: " ")[2]) }.reduce(0, +))
        }
        try mock.waitUntil(timeout: 60) { lines in
            let (received, gaps) = tally(lines)
            return received + gaps >= total + 1 && gaps > 0
        }
        let (received, gaps) = tally(mock.stdoutLines)
        #expect(received + gaps == total + 1 && Double(gaps) == lost, "received \(received), gaps \(gaps), lost \(lost)")
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    /// A flipped byte in a spooled record (a disk fault): on the next start that record is skipped, the intact ones
    /// after it in the same segment are still delivered, and a gap record counts the loss.
    @Test func aCorruptSpooledRecordIsSkippedReportedAndTheRestDelivered() throws {
        let pki = try TestPKI.mint()
        let port = try FreePort.closed()
        let spool = pki.directory + "/spool"
        let settings = environment(pki, controlPlanePort: port, spool: spool)
        let (proxy, ids) = try runProxy(settings, connections: 6)
        proxy.signal(SIGTERM)  // everything queued is spooled on the way out
        #expect(try proxy.waitForExit(timeout: 30) == 0)
        let segment = try #require(
            try FileManager.default.contentsOfDirectory(atPath: spool).filter { $0.hasPrefix("segment-") }.sorted().first)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: spool + "/" + segment))
        let first = Int(bytes[0]) << 24 | Int(bytes[1]) << 16 | Int(bytes[2]) << 8 | Int(bytes[3])
        bytes[8 + first + 8 + 10] ^= 0xff  // inside the second record's payload
        try bytes.write(to: URL(fileURLWithPath: spool + "/" + segment))

        let (mock, _) = try mocks.startMock(pki, port: port)
        defer { withExtendedLifetime(mock) {} }
        let restarted = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: settings)
        try mock.waitUntil(timeout: 60) { lines in
            lines.filter { $0.hasPrefix("RECEIVED") }.count >= ids.count - 1 && lines.contains { $0.hasPrefix("GAP") }
        }
        let received = Set(mock.stdoutLines.filter { $0.hasPrefix("RECEIVED") }.map { String($0.split(separator: " ")[2]) })
        #expect(received.count == ids.count - 1 && received.isSubset(of: Set(ids)))
        let gaps = mock.stdoutLines.filter { $0.hasPrefix("GAP") }
        #expect(gaps.count == 1 && gaps.first?.split(separator: " ")[2] == "1", "\(gaps)")
        _ = try restarted.waitForStderr(containing: "had corrupt records", timeout: 10)
        #expect(try metric(restarted, #"kaizen_egress_actions_dropped_total{stage="corrupt"}"#) == 1)
        restarted.signal(SIGTERM)
        #expect(try restarted.waitForExit(timeout: 30) == 0)
    }

    /// The spool directory removed under the running proxy: it is created again, the undelivered actions it held
    /// are counted in a gap record, and later actions are kept and delivered.
    @Test func aRemovedSpoolDirectoryIsCreatedAgainAndTheLossReported() throws {
        let pki = try TestPKI.mint()
        let port = try FreePort.closed()
        let spool = pki.directory + "/spool"
        var settings = environment(pki, controlPlanePort: port, spool: spool)
        settings["KAIZEN_LOG_LEVEL"] = "debug"  // the reporter logs each spool write
        let (proxy, ids) = try runProxy(settings, connections: 3)
        _ = try proxy.waitForStderr(containing: "spool.pending=3", timeout: 30)
        try FileManager.default.removeItem(atPath: spool)
        let proxyPort = try proxy.listeningPort()
        let closed = try FreePort.refusing()
        for _ in 0..<2 {
            _ = try runCommand(Paths.which("curl"), ["-s", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "http://127.0.0.1:\(closed)/"])
        }
        let later = try proxy.waitForLines(count: 5, timeout: 30) { $0.contains("\"action\"") }.dropFirst(3).compactMap { line in
            line.components(separatedBy: "\"event_id\":\"").dropFirst().first.map { String($0.prefix(36)) }
        }
        _ = try proxy.waitForStderr(containing: "was removed while the proxy ran", timeout: 30)
        #expect(FileManager.default.fileExists(atPath: spool + "/lock"))
        let (mock, _) = try mocks.startMock(pki, port: port)
        defer { withExtendedLifetime(mock) {} }
        try waitForDelivery(Array(later), at: mock)
        _ = try mock.waitForLine(timeout: 30) { $0.hasPrefix("GAP") }
        let gaps = mock.stdoutLines.filter { $0.hasPrefix("GAP") }.compactMap { Int($0.split(separator: " ")[2]) }
        #expect(gaps.reduce(0, +) == ids.count, "\(gaps)")
        #expect(try metric(proxy, #"kaizen_egress_actions_dropped_total{stage="disk"}"#) == Double(ids.count))
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }
}

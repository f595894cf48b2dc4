import Foundation
import Testing

/// The proxy binary reporting to a mock control plane: delivery, an outage, and a kill -9.
@Suite(.serialized) struct ReporterTests {
    let mocks = ControlPlaneConnectionTests()

    func environment(_ pki: TestPKI, controlPlanePort: Int, spool: String) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment
        for key in environment.keys where key.hasPrefix("KAIZEN_") || key == "PORT" { environment[key] = nil }
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
        let stderr = try proxy.waitForStderr(containing: "proxy listening on 127.0.0.1:", timeout: 30)
        let port = try #require(Int(stderr.components(separatedBy: "proxy listening on 127.0.0.1:")[1].prefix { $0.isNumber }))
        let closed = try FreePort.closed()
        for _ in 0..<count {
            _ = try runCommand(Paths.which("curl"), ["-s", "--max-time", "10", "-x", "http://127.0.0.1:\(port)", "http://127.0.0.1:\(closed)/"])
        }
        var ids: [String] = []
        for _ in 0..<50 where ids.count < count {
            _ = try proxy.waitForLine(timeout: 10) { $0.contains("\"action\"") }
            ids = proxy.stdoutLines.filter { $0.contains("\"action\"") }.compactMap { line in
                line.components(separatedBy: "\"event_id\":\"").dropFirst().first.map { String($0.prefix(36)) }
            }
        }
        #expect(ids.count == count)
        return (proxy, ids)
    }

    func waitForDelivery(_ ids: [String], at mock: ChildProcess) throws {
        for id in ids {
            _ = try mock.waitForLine(timeout: 45) { $0.hasSuffix(id) }
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
}

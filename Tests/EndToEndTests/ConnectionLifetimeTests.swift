import ControlPlane
@testable import EgressProxy
import Foundation
import Logging
import NIOCore
import NIOPosix
import TestSupport
import Testing

/// What a connection holds is freed once it has closed: a proxy in front of an agent runs for weeks, so anything a
/// closed connection keeps (a reference cycle between it and its handlers) grows without end. In this process, so
/// the connections can be counted.
@Suite struct ConnectionLifetimeTests {
    @Test func closedInspectedConnectionsAreFreed() async throws {
        let pki = try TestPKI.mint()
        let ca = try InspectionTests.makeCA(in: pki.directory)
        let (origin, originPort) = try ChildProcess.origin(mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        defer { withExtendedLifetime(origin) {} }
        var configuration = try ProxyConfiguration(environment: [
            "KAIZEN_LOCAL": "1", "PORT": "0", "KAIZEN_ALLOW_PRIVATE": ProxyEnvironment.loopbackOrigins,
            "KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": ca + "/ca.key", "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
        ])
        configuration.drainTimeout = .seconds(1)
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let sink = RecordingSink()
        let server = ProxyServer(
            configuration: configuration, sink: sink, logger: logger, group: group,
            inspection: try Inspection.make(configuration, logger: logger))
        let port = try #require(try await server.bind()?.port)
        let task = Task { try await server.run() }
        let before = InterceptedConnection.alive.load(ordering: .relaxed)

        // Each URL on a connection of its own (Connection: close): kept upstream connections are taken and given back.
        let count = 12
        let result = try runCommand(Paths.which("curl"), [
            "-sS", "--max-time", "20", "-x", "http://127.0.0.1:\(port)", "--cacert", ca + "/ca.pem", "-H", "Connection: close",
        ] + Array(repeating: "https://localhost:\(originPort)/hello", count: count))
        #expect(result.stdout.components(separatedBy: "hello from origin").count - 1 == count, "\(result.stderr)")
        // Other ends: a WebSocket relayed after its 101, bodies cut, a pipelined request refused, and an upstream
        // the proxy does not trust (its certificate names localhost, not other.test).
        let script = Paths.endToEndDirectory.appendingPathComponent("mitm_client.py").path
        for mode in ["ws", "close-notify", "pipelined-malformed"] {
            let run = try runCommand(Paths.which("python3"), [script, mode, "\(port)", "\(originPort)", ca + "/ca.pem"], timeout: 60)
            #expect(run.status == 0, "\(mode): \(run.stderr)")
        }
        let untrusted = try runCommand(Paths.which("python3"), [
            Paths.endToEndDirectory.appendingPathComponent("raw_mitm_request.py").path, "\(port)", "\(originPort)",
            ca + "/ca.pem", "other.test", #"GET /hello HTTP/1.1\r\nHost: other.test\r\n\r\n"#,
        ])
        #expect(untrusted.stdout.hasPrefix("CLOSED"), "\(untrusted.stdout)")
        // HTTP/2 inside inspection: streams answered, and one reset by the origin.
        let h2Origin = try ChildProcess(Paths.which("python3"), [
            Paths.endToEndDirectory.appendingPathComponent("h2_origin.py").path, "--cert", pki.serverCertificate,
            "--key", pki.serverKey,
        ])
        defer { withExtendedLifetime(h2Origin) {} }
        let h2Port = try #require(Int(try h2Origin.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }.dropFirst(5)))
        let h2 = try runCommand(Paths.which("curl"), [
            "-sS", "--http2", "--max-time", "20", "-x", "http://127.0.0.1:\(port)", "--cacert", ca + "/ca.pem",
            "-w", " %{http_version}", "https://localhost:\(h2Port)/size/100", "https://localhost:\(h2Port)/reset",
        ])
        #expect(h2.stdout.hasPrefix("0123456789") && h2.stdout.contains(" 2"), "\(h2.stdout) \(h2.stderr)")
        // Every connection's close record: its connection has ended.
        let connections = Set(sink.actions.map { $0.action.metadata.connectionID ?? $0.action.metadata.eventID })
        #expect(connections.count > count + 3, "\(connections.count)")
        for connection in connections { _ = try await sink.close(eventID: connection) }
        // Each event loop finishes what it was doing when it closed them.
        for loop in group.makeIterator() { try await loop.submit {}.get() }
        #expect(InterceptedConnection.alive.load(ordering: .relaxed) == before, "closed connections are still held")

        task.cancel()
        _ = try? await task.value
        try await group.shutdownGracefully()
    }
}

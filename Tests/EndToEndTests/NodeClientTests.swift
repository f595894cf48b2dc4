import Foundation
import TestSupport
import Testing

/// Node.js, the runtime of many agents, with its own TLS stack (its bundled OpenSSL, strict verification): it accepts
/// the minted leaf through `NODE_EXTRA_CA_CERTS`, as `ca doctor` tells users to set it, over HTTP/1.1 and HTTP/2, and
/// each request is reported with its method and path.
@Suite struct NodeClientTests {
    /// Runs wherever node is installed, and always as root (CI), where `make test` installs it.
    static let nodeExpected = FileManager.default.isExecutableFile(atPath: Paths.which("node")) || getuid() == 0

    func node(_ setup: InspectionTests.Setup, host: String, path: String, _ protocolName: String) throws -> [String: Any] {
        let script = Paths.endToEndDirectory.appendingPathComponent("node_client.js").path
        var environment = ProcessInfo.processInfo.environment
        environment["NODE_EXTRA_CA_CERTS"] = setup.inspectionCA
        let child = try ChildProcess(
            Paths.which("node"), [script, "\(setup.proxyPort)", host, "\(setup.originPort)", path, protocolName],
            environment: environment)
        let status = try child.waitForExit(timeout: 30)
        let stdout = child.stdoutLines.joined(separator: "\n")
        guard status == 0, let object = try? JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any]
        else { throw TestFailure("node_client.js: \(status) \(stdout) \(child.stderr)") }
        return object
    }

    @Test(.enabled(if: nodeExpected, "needs node (make test installs nodejs when run as root)"))
    func nodeAcceptsTheMintedLeafOverHTTP1() throws {
        let setup = try InspectionTests().setUp()
        let answer = try node(setup, host: "localhost", path: "/hello?q=1", "h1")
        // Node verified the minted leaf; this origin answers no ALPN, and neither does the proxy (it mirrors the upstream).
        #expect(answer["authorized"] as? Bool == true && answer["issuer"] as? String == "Kaizen egress inspection CA", "\(answer)")
        #expect(answer["alpn"] as? Bool == false, "\(answer)")
        let body = (answer["body"] as? String)?.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(answer["status"] as? Int == 200 && body == "hello from origin", "\(answer)")
        let action = try #require(try setup.waitForActions(1).first)
        #expect(action["intercepted"] as? Bool == true && action["method"] as? String == "GET", "\(action)")
        #expect(action["path"] as? String == "/hello", "\(action)")
    }

    @Test(.enabled(if: nodeExpected, "needs node (make test installs nodejs when run as root)"))
    func nodeAcceptsTheMintedLeafOverHTTP2() throws {
        let setup = try InspectionHTTP2Tests().setUp()
        let answer = try node(setup, host: "localhost", path: "/size/70000", "h2")
        #expect(answer["authorized"] as? Bool == true && answer["issuer"] as? String == "Kaizen egress inspection CA", "\(answer)")
        #expect(answer["alpn"] as? String == "h2", "\(answer)")
        #expect(answer["status"] as? Int == 200 && answer["bytes"] as? Int == 70000, "\(answer)")
        let action = try #require(try setup.waitForActions(1).first)
        #expect(action["protocol"] as? String == "h2" && action["path"] as? String == "/size/70000", "\(action)")
        #expect(action["response_body_bytes"] as? Int == 70000, "\(action)")
    }
}

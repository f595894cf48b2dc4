import Foundation
import Testing

/// Two network namespaces joined by a veth pair: "agent" (the proxy, redirected by deploy/iptables.sh) and
/// "internet" (a local HTTPS origin). Only addresses inside these namespaces are used. Removed on deinit,
/// also when a test fails.
final class NetworkLab {
    static var available: Bool {
        getuid() == 0 && ["ip", "iptables", "setpriv"].allSatisfy { FileManager.default.isExecutableFile(atPath: Paths.which($0)) }
    }

    let agent: String
    let internet: String
    let agentAddress = "10.250.0.1"
    let internetAddress = "10.250.0.2"

    init() throws {
        let tag = String(UUID().uuidString.prefix(6)).lowercased()
        agent = "kz\(tag)a"
        internet = "kz\(tag)i"
        let commands: [[String]] = [
            ["netns", "add", agent], ["netns", "add", internet],
            ["link", "add", "\(agent)v", "type", "veth", "peer", "name", "\(internet)v"],
            ["link", "set", "\(agent)v", "netns", agent], ["link", "set", "\(internet)v", "netns", internet],
            ["-n", agent, "addr", "add", "\(agentAddress)/24", "dev", "\(agent)v"],
            ["-n", internet, "addr", "add", "\(internetAddress)/24", "dev", "\(internet)v"],
            ["-n", agent, "link", "set", "\(agent)v", "up"], ["-n", internet, "link", "set", "\(internet)v", "up"],
            ["-n", agent, "link", "set", "lo", "up"], ["-n", internet, "link", "set", "lo", "up"],
        ]
        for arguments in commands {
            let result = try runCommand(Paths.which("ip"), arguments, timeout: 20)
            guard result.status == 0 else { throw TestFailure("ip \(arguments.joined(separator: " ")): \(result.stderr)") }
        }
    }

    deinit {
        for namespace in [agent, internet] {
            _ = try? runCommand(Paths.which("ip"), ["netns", "del", namespace], timeout: 20)
        }
    }

    /// `ip netns exec NAMESPACE executable arguments…`
    func inNamespace(_ namespace: String, _ executable: String, _ arguments: [String]) -> [String] {
        ["netns", "exec", namespace, executable] + arguments
    }
}

@Suite(.serialized) struct TransparentTests {
    static let proxyUID = "1337"

    @Test(.enabled(if: NetworkLab.available, "needs root, ip, iptables and setpriv (CI runs as root)"))
    func redirectedTrafficIsReportedWithTheSNIAndTheOriginalDestination() throws {
        let lab = try NetworkLab()
        let pki = try TestPKI.mint()
        let ip = Paths.which("ip")
        let origin = try ChildProcess(ip, lab.inNamespace(lab.internet, Paths.which("python3"), [
            Paths.originScript, "--mode", "https", "--host", lab.internetAddress,
            "--cert", pki.serverCertificate, "--key", pki.serverKey,
        ]))
        let originPort = try #require(Int(try origin.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }.dropFirst(5)))

        var environment = ProcessInfo.processInfo.environment
        for key in environment.keys where key.hasPrefix("KAIZEN_") || key == "PORT" { environment[key] = nil }
        let proxy = try ChildProcess(
            ip,
            lab.inNamespace(lab.agent, Paths.which("setpriv"), [
                "--reuid", Self.proxyUID, "--regid", Self.proxyUID, "--clear-groups",
                Paths.proxyBinary, "--local", "--port", "3128", "--transparent-port", "15001",
            ]),
            environment: environment
        )
        _ = try proxy.waitForStderr(containing: "transparent listener on 127.0.0.1:15001", timeout: 30)

        let script = Paths.endToEndDirectory.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("deploy/iptables.sh").path
        let rules = try runCommand(ip, lab.inNamespace(lab.agent, "/usr/bin/env", [
            "PROXY_UID=\(Self.proxyUID)", "KAIZEN_TRANSPARENT_PORT=15001", "/bin/sh", script,
        ]))
        #expect(rules.status == 0, "\(rules.stderr)")

        // The agent has no proxy settings at all.
        let curl = try runCommand(ip, lab.inNamespace(lab.agent, Paths.which("curl"), [
            "-sS", "--noproxy", "*", "--max-time", "10", "--cacert", pki.caCertificate,
            "--resolve", "localhost:\(originPort):\(lab.internetAddress)", "https://localhost:\(originPort)/hello",
        ]), timeout: 30)
        #expect(curl.status == 0 && curl.stdout == "hello from origin", "\(curl.stdout) \(curl.stderr)")
        let line = try proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
        #expect(line.contains("\"transport\":\"transparent\""), "\(line)")
        #expect(line.contains("\"target\":\"localhost:\(originPort)\""), "\(line)")
        #expect(line.contains("\"sni\":\"localhost\""))
        #expect(line.contains("\"original_dst\":\"\(lab.internetAddress):\(originPort)\""))
        // The proxy's own connection to the origin went out directly (it reached the origin: no loop).
        #expect(line.contains("\"resolved_ip\":\"\(lab.internetAddress)\""))

        // QUIC (UDP 443) from the agent is rejected, so clients fall back to TCP.
        let udp = try runCommand(ip, lab.inNamespace(lab.agent, Paths.which("python3"), ["-c", """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            s.connect(("\(lab.internetAddress)", 443))
            try:
                s.send(b"quic?")
                s.recv(10)
                print("answered")
            except (PermissionError, ConnectionRefusedError):
                print("rejected")
            except socket.timeout:
                print("timeout")
            """]))
        #expect(udp.stdout == "rejected", "\(udp.stdout) \(udp.stderr)")

        // A connection straight to the transparent port is refused, never dialled.
        let direct = try runCommand(ip, lab.inNamespace(lab.agent, Paths.which("python3"), ["-c", """
            import socket
            s = socket.create_connection(("127.0.0.1", 15001), timeout=5)
            print("closed" if s.recv(10) == b"" else "data")
            """]))
        #expect(direct.stdout == "closed", "\(direct.stdout) \(direct.stderr)")
        _ = try proxy.waitForStderr(containing: "original destination is the proxy itself was refused", timeout: 10)
        withExtendedLifetime(origin) {}
    }
}

import Foundation
import TestSupport
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
    let agentAddress6 = "fd00:6b7a::1"
    let internetAddress6 = "fd00:6b7a::2"

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
            ["-n", agent, "addr", "add", "\(agentAddress6)/64", "dev", "\(agent)v", "nodad"],
            ["-n", internet, "addr", "add", "\(internetAddress6)/64", "dev", "\(internet)v", "nodad"],
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
            try? FileManager.default.removeItem(atPath: "/etc/netns/\(namespace)")
        }
    }

    /// Gives the agent namespace its own /etc/hosts (`ip netns exec` mounts /etc/netns/NAME/hosts over it).
    func setAgentHosts(_ text: String) throws {
        try FileManager.default.createDirectory(atPath: "/etc/netns/\(agent)", withIntermediateDirectories: true)
        try text.write(toFile: "/etc/netns/\(agent)/hosts", atomically: true, encoding: .utf8)
    }

    /// `ip netns exec NAMESPACE executable arguments…`
    func inNamespace(_ namespace: String, _ executable: String, _ arguments: [String]) -> [String] {
        ["netns", "exec", namespace, executable] + arguments
    }
}

@Suite(.serialized) struct TransparentTests {
    static let proxyUID = "1337"

    /// A lab with the origin in "internet" and the proxy (as the exempt UID) plus the iptables rules in "agent".
    struct Setup {
        let lab: NetworkLab
        let pki: TestPKI
        let origin: ChildProcess
        let originPort: Int
        let proxy: ChildProcess
        var ipv6 = false
        var originAddress: String { ipv6 ? lab.internetAddress6 : lab.internetAddress }

        /// curl from the agent namespace, with no proxy settings, to https://localhost:PORT/PATH.
        func curl(trust: String, path: String = "/hello", extra: [String] = []) throws -> CommandResult {
            try runCommand(Paths.which("ip"), lab.inNamespace(lab.agent, Paths.which("curl"), [
                "-sS", "--noproxy", "*", "--max-time", "10", "--cacert", trust,
                "--resolve", "localhost:\(originPort):\(ipv6 ? "[\(originAddress)]" : originAddress)",
            ] + extra + ["https://localhost:\(originPort)\(path)"]), timeout: 30)
        }
    }

    /// - Parameter proxyEnvironment: settings for the proxy, made from the test PKI.
    /// The proxy's settings for inspection: a new CA (its directory in `caDirectory`), the test PKI trusted upstream.
    static func inspection(_ pki: TestPKI, caDirectory: inout String) throws -> [String: String] {
        caDirectory = try InspectionTests.makeCA(in: pki.directory)
        // The proxy runs as its own UID: the CA directory and key are its alone.
        chown(caDirectory, 1337, 1337)
        chown(caDirectory + "/ca.key", 1337, 1337)
        return [
            "KAIZEN_CA_CERT": caDirectory + "/ca.pem", "KAIZEN_CA_KEY": caDirectory + "/ca.key",
            "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
        ]
    }

    /// - Parameter http2Origin: the origin speaks HTTP/2 (h2_origin.py) instead of HTTP/1.1 (origin.py).
    func setUp(
        ipv6: Bool = false,
        agentHosts: String? = nil,
        http2Origin: Bool = false,
        proxyEnvironment: (TestPKI, NetworkLab) throws -> [String: String] = { _, _ in [:] }
    ) throws -> Setup {
        let lab = try NetworkLab()
        if let agentHosts { try lab.setAgentHosts(agentHosts) }
        let pki = try TestPKI.mint()
        var extra = try proxyEnvironment(pki, lab)
        // The proxy runs as its own UID: its state directory (the destination baseline) is its alone.
        let state = pki.directory + "/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        chown(state, 1337, 1337)
        extra["KAIZEN_STATE_DIR"] = state
        let ip = Paths.which("ip")
        let originHost = ipv6 ? lab.internetAddress6 : lab.internetAddress
        let origin = try ChildProcess(ip, lab.inNamespace(lab.internet, Paths.which("python3"), http2Origin
            ? [Paths.endToEndDirectory.appendingPathComponent("h2_origin.py").path, "--host", originHost,
               "--cert", pki.serverCertificate, "--key", pki.serverKey]
            : [Paths.originScript, "--mode", "https", "--host", originHost, "--cert", pki.serverCertificate, "--key", pki.serverKey]
        ))
        let originPort = try #require(Int(try origin.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }.dropFirst(5)))

        // The lab's "internet" is a private range: the guard must let the proxy reach it.
        let environment = ProxyEnvironment.make(["KAIZEN_ALLOW_PRIVATE": "10.250.0.0/24,fd00:6b7a::/64"])
        let proxy = try ChildProcess(
            ip,
            lab.inNamespace(lab.agent, Paths.which("setpriv"), [
                "--reuid", Self.proxyUID, "--regid", Self.proxyUID, "--clear-groups",
                Paths.proxyBinary, "--local", "--port", "3128", "--transparent-port", "15001",
            ]),
            environment: environment.merging(extra) { $1 }
        )
        _ = try proxy.waitForStderr(containing: "transparent listener on 127.0.0.1:15001", timeout: 30)

        let script = Paths.endToEndDirectory.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("deploy/iptables.sh").path
        let rules = try runCommand(ip, lab.inNamespace(lab.agent, "/usr/bin/env", [
            "PROXY_UID=\(Self.proxyUID)", "KAIZEN_TRANSPARENT_PORT=15001", "/bin/sh", script,
        ]))
        guard rules.status == 0 else { throw TestFailure("iptables.sh: \(rules.stderr)") }
        return Setup(lab: lab, pki: pki, origin: origin, originPort: originPort, proxy: proxy, ipv6: ipv6)
    }

    @Test(.enabled(if: NetworkLab.available, "needs root, ip, iptables and setpriv (CI runs as root)"))
    func redirectedTrafficIsReportedWithTheSNIAndTheOriginalDestination() throws {
        // In this namespace the SNI's name resolves to the origin's address: no mismatch.
        let setup = try setUp(agentHosts: "10.250.0.2 localhost\n")
        let lab = setup.lab
        let ip = Paths.which("ip")
        // The agent has no proxy settings at all.
        let curl = try setup.curl(trust: setup.pki.caCertificate)
        #expect(curl.status == 0 && curl.stdout == "hello from origin", "\(curl.stdout) \(curl.stderr)")
        let line = try setup.proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
        #expect(line.contains("\"transport\":\"transparent\""), "\(line)")
        #expect(line.contains("\"first_seen\":true"), "\(line)")
        #expect(line.contains("\"target\":\"localhost:\(setup.originPort)\""), "\(line)")
        #expect(line.contains("\"sni\":\"localhost\""))
        #expect(line.contains("\"original_dst\":\"\(lab.internetAddress):\(setup.originPort)\""))
        #expect(line.contains("\"sni_mismatch\":false"), "\(line)")
        // The proxy's own connection to the origin went out directly (it reached the origin: no loop).
        #expect(line.contains("\"resolved_ip\":\"\(lab.internetAddress)\""))

        // Plain HTTP names its destination in Host.
        let (httpOrigin, httpPort) = try {
            let child = try ChildProcess(ip, lab.inNamespace(lab.internet, Paths.which("python3"), [
                Paths.originScript, "--mode", "http", "--host", lab.internetAddress,
            ]))
            let port = try #require(Int(try child.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }.dropFirst(5)))
            return (child, port)
        }()
        let plain = try runCommand(ip, lab.inNamespace(lab.agent, Paths.which("curl"), [
            "-sS", "--noproxy", "*", "--max-time", "10",
            "--resolve", "localhost:\(httpPort):\(lab.internetAddress)", "http://localhost:\(httpPort)/hello",
        ]), timeout: 30)
        #expect(plain.status == 0 && plain.stdout == "hello from origin", "\(plain.stdout) \(plain.stderr)")
        let lines = try setup.proxy.waitForLines(count: 2, timeout: 20) { $0.contains("\"action\"") }
        #expect(lines[1].contains("\"target\":\"localhost:\(httpPort)\"") && lines[1].contains("\"tls\":false"), "\(lines[1])")
        #expect(lines[1].contains("\"sni_mismatch\":false"), "\(lines[1])")
        withExtendedLifetime(httpOrigin) {}

        // Neither TLS nor HTTP (a server that speaks first): relayed, reported by address and port.
        let banner = try ChildProcess(ip, lab.inNamespace(lab.internet, Paths.which("python3"), [
            Paths.originScript, "--mode", "banner", "--host", lab.internetAddress,
        ]))
        let bannerPort = try #require(Int(try banner.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }.dropFirst(5)))
        let greeting = try runCommand(ip, lab.inNamespace(lab.agent, Paths.which("python3"), ["-c", """
            import socket
            s = socket.create_connection(("\(lab.internetAddress)", \(bannerPort)), timeout=5)
            print(s.recv(100).decode().strip())
            s.sendall(b"ping")
            print(s.recv(100).decode())
            """]))
        #expect(greeting.stdout == "SSH-2.0-kaizen-test\nping", "\(greeting.stdout) \(greeting.stderr)")
        let all = try setup.proxy.waitForLines(count: 3, timeout: 20) { $0.contains("\"action\"") }
        #expect(all[2].contains("\"target\":\"\(lab.internetAddress):\(bannerPort)\"") && all[2].contains("\"tls\":false"), "\(all[2])")
        withExtendedLifetime(banner) {}

        // UDP the proxy cannot see does not leave: QUIC (443) and any other port are rejected, so clients fall back to
        // TCP; DNS (53) goes out. An echo server in "internet" answers on all three ports.
        let echo = try ChildProcess(ip, lab.inNamespace(lab.internet, Paths.which("python3"), ["-c", """
            import selectors, socket
            selector = selectors.DefaultSelector()
            for port in (53, 443, 8443):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("\(lab.internetAddress)", port))
                selector.register(s, selectors.EVENT_READ)
            print("PORT 53", flush=True)
            while True:
                for key, _ in selector.select():
                    data, peer = key.fileobj.recvfrom(100)
                    key.fileobj.sendto(data, peer)
            """]))
        _ = try echo.waitForLine(timeout: 20) { $0 == "PORT 53" }
        let udp = try runCommand(ip, lab.inNamespace(lab.agent, Paths.which("python3"), ["-c", """
            import socket
            for port in (443, 8443, 53):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.settimeout(3)
                s.connect(("\(lab.internetAddress)", port))
                try:
                    s.send(b"udp?")
                    s.recv(10)
                    print(port, "answered")
                except (PermissionError, ConnectionRefusedError):
                    print(port, "rejected")
                except socket.timeout:
                    print(port, "timeout")
            """]))
        #expect(udp.stdout == "443 rejected\n8443 rejected\n53 answered", "\(udp.stdout) \(udp.stderr)")
        withExtendedLifetime(echo) {}

        // A destination that never answers (no host has the address): the dial fails, and the record still names
        // what the client asked for, from the bytes it sent meanwhile: its SNI, a plain request's Host.
        let nowhere = "10.250.0.99"
        for (url, name) in [("https://unreachable.test:443/", "unreachable.test"), ("http://unreachable-http.test:80/", "unreachable-http.test")] {
            let port = url.hasPrefix("https") ? 443 : 80
            let failed = try runCommand(ip, lab.inNamespace(lab.agent, Paths.which("curl"), [
                "-sS", "--noproxy", "*", "--max-time", "20", "-k", "--resolve", "\(name):\(port):\(nowhere)", url,
            ]), timeout: 40)
            #expect(failed.status != 0, "\(failed.stdout)")
            let record = try setup.proxy.waitForLine(timeout: 30) { $0.contains("\"action\"") && $0.contains("\"original_dst\":\"\(nowhere):\(port)\"") }
            #expect(record.contains("\"target\":\"\(name):\(port)\"") && record.contains("\"outcome\":\"failed\""), "\(record)")
            #expect(record.contains("\"original_dst\":\"\(nowhere):\(port)\""), "\(record)")
            #expect(record.contains(url.hasPrefix("https") ? "\"sni\":\"\(name)\"" : "\"tls\":false"), "\(record)")
        }

        // A connection straight to the transparent port is refused, never dialled.
        let direct = try runCommand(ip, lab.inNamespace(lab.agent, Paths.which("python3"), ["-c", """
            import socket
            s = socket.create_connection(("127.0.0.1", 15001), timeout=5)
            print("closed" if s.recv(10) == b"" else "data")
            """]))
        #expect(direct.stdout == "closed", "\(direct.stdout) \(direct.stderr)")
        _ = try setup.proxy.waitForStderr(containing: "original destination is the proxy itself was refused", timeout: 10)
    }

    @Test(.enabled(if: NetworkLab.available, "needs root, ip, iptables and setpriv (CI runs as root)"))
    func withACATransparentConnectionsAreInspected() throws {
        var caDirectory = ""
        let setup = try setUp { pki, _ in try Self.inspection(pki, caDirectory: &caDirectory) }
        let curl = try setup.curl(trust: caDirectory + "/ca.pem")
        #expect(curl.status == 0 && curl.stdout == "hello from origin", "\(curl.stdout) \(curl.stderr)")
        let line = try setup.proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
        #expect(line.contains("\"transport\":\"transparent\"") && line.contains("\"intercepted\":true"), "\(line)")
        #expect(line.contains("\"method\":\"GET\"") && line.contains("\"path\":\"/hello\""), "\(line)")
        #expect(line.contains("\"target\":\"localhost:\(setup.originPort)\""), "\(line)")
        #expect(line.contains("\"original_dst\":\"\(setup.lab.internetAddress):\(setup.originPort)\""))
        // "localhost" resolves to loopback here, not to the origin's address.
        #expect(line.contains("\"sni_mismatch\":true"), "\(line)")
    }

    @Test(.enabled(if: NetworkLab.available, "needs root, ip, iptables and setpriv (CI runs as root)"))
    func transparentHTTP2IsInspectedStreamByStream() throws {
        var caDirectory = ""
        let setup = try setUp(http2Origin: true) { pki, _ in try Self.inspection(pki, caDirectory: &caDirectory) }
        let curl = try setup.curl(trust: caDirectory + "/ca.pem", path: "/size/5", extra: ["--http2", "-w", " %{http_version}"])
        #expect(curl.status == 0 && curl.stdout == "01234 2", "\(curl.stdout) \(curl.stderr)")
        let line = try setup.proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
        #expect(line.contains("\"transport\":\"transparent\"") && line.contains("\"protocol\":\"h2\""), "\(line)")
        #expect(line.contains("\"path\":\"/size/5\"") && line.contains("\"status\":200"), "\(line)")
    }

    @Test(.enabled(if: NetworkLab.available, "needs root, ip, iptables and setpriv (CI runs as root)"))
    func ipv6IsRedirectedToo() throws {
        let setup = try setUp(ipv6: true)
        _ = try setup.proxy.waitForStderr(containing: "transparent listener on [::1]:15001", timeout: 10)
        let curl = try setup.curl(trust: setup.pki.caCertificate)
        #expect(curl.status == 0 && curl.stdout == "hello from origin", "\(curl.stdout) \(curl.stderr)")
        let line = try setup.proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
        #expect(line.contains("\"transport\":\"transparent\"") && line.contains("\"sni\":\"localhost\""), "\(line)")
        #expect(line.contains("\"original_dst\":\"[\(setup.lab.internetAddress6)]:\(setup.originPort)\""), "\(line)")
        // Here "localhost" resolves to the loopback addresses, not to the address the agent reached: flagged.
        #expect(line.contains("\"sni_mismatch\":true"), "\(line)")

        // Where IPv6 has no nat table (no ip6table_nat: an ip6tables that fails for `-t nat` stands in), IPv6 TCP
        // cannot be redirected, so it is rejected rather than let through unobserved.
        let shim = setup.pki.directory + "/shim"
        try FileManager.default.createDirectory(atPath: shim, withIntermediateDirectories: false)
        try "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = nat ] && exit 1; done\nexec \(Paths.which("ip6tables")) \"$@\"\n"
            .write(toFile: shim + "/ip6tables", atomically: true, encoding: .utf8)
        chmod(shim + "/ip6tables", 0o755)
        let ip = Paths.which("ip")
        _ = try runCommand(ip, setup.lab.inNamespace(setup.lab.agent, Paths.which("ip6tables"), ["-t", "nat", "-F", "KAIZEN_OUTPUT"]))
        let script = Paths.endToEndDirectory.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("deploy/iptables.sh").path
        let rules = try runCommand(ip, setup.lab.inNamespace(setup.lab.agent, "/usr/bin/env", [
            "PATH=\(shim):/usr/sbin:/usr/bin:/sbin:/bin", "PROXY_UID=\(Self.proxyUID)", "KAIZEN_TRANSPARENT_PORT=15001", "/bin/sh", script,
        ]))
        #expect(rules.status == 0 && rules.stderr.contains("outbound IPv6 TCP is rejected"), "\(rules.stderr)")
        let rejected = try setup.curl(trust: setup.pki.caCertificate)
        #expect(rejected.status != 0 && !rejected.stdout.contains("hello from origin"), "\(rejected.stdout) \(rejected.stderr)")
    }

    @Test(.enabled(if: NetworkLab.available, "needs root, ip, iptables and setpriv (CI runs as root)"))
    func enforcedPoliciesCloseBlockedTransparentConnections() throws {
        let ip = Paths.which("ip")
        var mock: ChildProcess?
        var policies = ""
        var modeFile = ""
        let setup = try setUp { pki, lab in
            // The mock control plane runs in the agent namespace, on its loopback (exempt from the redirect).
            policies = pki.directory + "/policies"
            modeFile = pki.directory + "/mode"
            try FileManager.default.createDirectory(atPath: policies, withIntermediateDirectories: false)
            try #"{"policies":[{"name":"only-localhost","mode":"allowlist","rules":{"domains":["localhost"]}}]}"#
                .write(toFile: policies + "/egress-agent.json", atomically: true, encoding: .utf8)
            var environment = ProcessInfo.processInfo.environment
            environment["MOCK_API_KEY"] = ControlPlaneConnectionTests.key
            let child = try ChildProcess(
                ip,
                lab.inNamespace(lab.agent, Paths.which("python3"), [
                    Paths.endToEndDirectory.appendingPathComponent("control_plane.py").path, "--cert", pki.serverCertificate,
                    "--key", pki.serverKey, "--policy-dir", policies, "--mode-file", modeFile,
                ]),
                environment: environment)
            let port = try #require(Int(try child.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }.dropFirst(5)))
            mock = child
            try "ok".write(toFile: modeFile, atomically: true, encoding: .utf8)
            let spool = pki.directory + "/spool"
            try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            chown(spool, 1337, 1337)
            return [
                "KAIZEN_API_KEY": ControlPlaneConnectionTests.key, "KAIZEN_API_URL": "https://127.0.0.1:\(port)",
                "KAIZEN_API_CA_FILE": pki.caCertificate, "KAIZEN_SPOOL_DIR": spool, "KAIZEN_MODE": "enforce",
                "KAIZEN_POLICY_REFRESH": "1s",
            ]
        }
        let lab = setup.lab
        let control = try #require(mock)
        _ = try control.waitForLine(timeout: 20) { $0 == "POLICY egress-agent 200" }
        func curl(_ url: String, _ extra: [String]) throws -> CommandResult {
            try runCommand(ip, lab.inNamespace(lab.agent, Paths.which("curl"), [
                "-sS", "--noproxy", "*", "--max-time", "10", "--cacert", setup.pki.caCertificate,
                "--resolve", "localhost:\(setup.originPort):\(lab.internetAddress)",
            ] + extra + [url]), timeout: 30)
        }

        // An allowed name the address does not belong to ("localhost" resolves to loopback here): the name counts
        // for nothing, the address alone is not on the allowlist, the connection is closed.
        let spoofed = try curl("https://localhost:\(setup.originPort)/hello", [])
        #expect(spoofed.status != 0 && !spoofed.stdout.contains("hello from origin"), "\(spoofed.stdout) \(spoofed.stderr)")
        let mismatch = try setup.proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
        #expect(mismatch.contains(#""sni_mismatch":true"#) && mismatch.contains(#""verdict":{"decision":"block","reason":"only-localhost"}"#), "\(mismatch)")

        // The SNI names a blocked domain: the connection is closed once the ClientHello is read.
        try #"{"policies":[{"name":"no-localhost","mode":"blocklist","rules":{"domains":["localhost"]}}]}"#
            .write(toFile: policies + "/egress-agent.json", atomically: true, encoding: .utf8)
        _ = try setup.proxy.waitForStderr(containing: "updated: no-localhost (blocklist)", timeout: 20)
        let byName = try curl("https://localhost:\(setup.originPort)/hello", [])
        #expect(byName.status != 0 && !byName.stdout.contains("hello from origin"), "\(byName.stdout) \(byName.stderr)")
        let blocked = try setup.proxy.waitForLines(count: 2, timeout: 20) { $0.contains("\"action\"") }[1]
        #expect(blocked.contains("\"transport\":\"transparent\"") && blocked.contains("\"sni\":\"localhost\""), "\(blocked)")
        #expect(blocked.contains(#""verdict":{"decision":"block","reason":"no-localhost"}"#), "\(blocked)")
        // By address, with no SNI: no policy blocks it.
        let byAddress = try curl("https://\(lab.internetAddress):\(setup.originPort)/hello", ["-k"])
        #expect(byAddress.stdout.contains("hello from origin"), "\(byAddress.stdout) \(byAddress.stderr)")

        // The policy now blocks the origin's address: the connection is closed before anything is dialled.
        try #"{"policies":[{"name":"no-origin","mode":"blocklist","rules":{"ips":["10.250.0.2/32"]}}]}"#
            .write(toFile: policies + "/egress-agent.json", atomically: true, encoding: .utf8)
        _ = try setup.proxy.waitForStderr(containing: "updated: no-origin (blocklist)", timeout: 20)
        let refused = try curl("https://\(lab.internetAddress):\(setup.originPort)/hello", ["-k"])
        #expect(refused.status != 0, "\(refused.stdout) \(refused.stderr)")
        let lines = try setup.proxy.waitForLines(count: 4, timeout: 20) { $0.contains("\"action\"") }
        #expect(lines[3].contains(#""outcome":"failed""#) && lines[3].contains(#""reason":"no-origin""#), "\(lines[3])")

        // Plain HTTP is judged by every name it gives, as inside a CONNECT tunnel: its absolute-form target's host
        // (which a server must use, not Host), a Host in a later segment (`|`: the client pauses there), a Host that
        // is no host name (not judged, refused). An unnamed request to an allowed name goes through.
        try #"{"policies":[{"name":"no-blocked","mode":"blocklist","rules":{"domains":["blocked.test"]}}]}"#
            .write(toFile: policies + "/egress-agent.json", atomically: true, encoding: .utf8)
        _ = try setup.proxy.waitForStderr(containing: "updated: no-blocked (blocklist)", timeout: 20)
        let httpOrigin = try ChildProcess(ip, lab.inNamespace(lab.internet, Paths.which("python3"), [
            Paths.originScript, "--mode", "http", "--host", lab.internetAddress,
        ]))
        let httpPort = try #require(Int(try httpOrigin.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }.dropFirst(5)))
        let requests = [
            "GET /hello HTTP/1.1\r\n|Host: blocked.test\r\nConnection: close\r\n\r\n",
            "GET http://blocked.test/hello HTTP/1.1\r\nHost: fine.test\r\nConnection: close\r\n\r\n",
            "GET /hello HTTP/1.1\r\nHost: blocked%2etest\r\nConnection: close\r\n\r\n",
            "GET /hello HTTP/1.1\r\nHost: fine.test\r\nConnection: close\r\n\r\n",
            // Pipelined: the first is answered, the second (blocked) never goes on.
            "GET /hello HTTP/1.1\r\nHost: fine.test\r\n\r\nGET /hello HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n",
        ]
        let sent = try runCommand(ip, lab.inNamespace(lab.agent, Paths.which("python3"), ["-c", """
            import socket, sys, time
            for request in sys.argv[1:]:
                s = socket.create_connection(("\(lab.internetAddress)", \(httpPort)), timeout=10)
                for index, piece in enumerate(request.split("|")):
                    if index: time.sleep(0.2)  # the client's pause: what is under test
                    s.sendall(piece.encode())
                answer = b""
                try:
                    while chunk := s.recv(4096): answer += chunk
                except OSError:
                    pass
                print({0: "closed", 1: "answered"}.get(answer.count(b"HTTP/1.1 200"), "answered twice"))
            """] + requests), timeout: 60)
        #expect(sent.stdout == "closed\nclosed\nclosed\nanswered\nanswered", "\(sent.stdout) \(sent.stderr)")
        // Four actions came before these; the pipelined connection has its own and one for the request refused.
        let judged = Array(try setup.proxy.waitForLines(count: 10, timeout: 20) { $0.contains("\"action\"") }[4..<8])
        #expect(judged[0].contains(#""target":"blocked.test:\#(httpPort)""#) && judged[0].contains(#""reason":"no-blocked""#), "\(judged[0])")
        #expect(judged[1].contains(#""target":"blocked.test:\#(httpPort)""#) && judged[1].contains(#""request_host":"fine.test""#)
            && judged[1].contains(#""reason":"no-blocked""#), "\(judged[1])")
        #expect(judged[2].contains(#""reason":"host not judged: the request names no valid host""#)
            && judged[2].contains(#""target":"\#(lab.internetAddress):\#(httpPort)""#), "\(judged[2])")
        #expect(judged[3].contains(#""target":"fine.test:\#(httpPort)""#) && judged[3].contains(#""decision":"allow""#), "\(judged[3])")
        let later = try setup.proxy.waitForLine(timeout: 20) { $0.contains("\"connection_id\"") && $0.contains("\"request_host\":\"blocked.test\"") }
        #expect(later.contains(#""reason":"no-blocked""#) && later.contains(#""target":"fine.test:\#(httpPort)""#), "\(later)")
        // A dial that fails (no host has the address) is still judged by the name the client sent meanwhile.
        _ = try curl("https://blocked.test:443/", ["-k", "--resolve", "blocked.test:443:10.250.0.99"])
        let unreachable = try setup.proxy.waitForLine(timeout: 30) { $0.contains("\"original_dst\":\"10.250.0.99:443\"") }
        #expect(unreachable.contains(#""target":"blocked.test:443""#) && unreachable.contains(#""verdict":{"decision":"block","reason":"no-blocked"}"#), "\(unreachable)")
        withExtendedLifetime(httpOrigin) {}
        withExtendedLifetime(control) {}
    }
}

import Foundation
import TestSupport
import Testing

/// Certificates an inspected upstream might present, minted per run with the openssl command line.
struct UpstreamCertificates {
    let directory: String
    /// The root the proxy trusts (KAIZEN_UPSTREAM_CA_FILE).
    var root: String { directory + "/root.pem" }

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("kaizen-upstream-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try "".write(toFile: directory + "/index.txt", atomically: true, encoding: .utf8)
        try "1000\n".write(toFile: directory + "/serial", atomically: true, encoding: .utf8)
        try """
            [ca]
            default_ca = test
            [test]
            database = index.txt
            unique_subject = no
            new_certs_dir = .
            serial = serial
            default_md = sha256
            policy = any
            copy_extensions = none
            [any]
            commonName = supplied
            """.write(toFile: directory + "/ca.cnf", atomically: true, encoding: .utf8)
        for name in ["root", "stranger"] {
            try openssl([
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=\(name)", "-keyout", "\(name).key", "-out", "\(name).pem",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            ])
        }
    }

    func openssl(_ arguments: [String]) throws {
        let result = try runCommand(Paths.which("openssl"), arguments, directory: directory, timeout: 30)
        guard result.status == 0 else { throw TestFailure("openssl \(arguments.prefix(2)): \(result.stderr)") }
    }

    static func stamp(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMddHHmmss'Z'"
        return formatter.string(from: date)
    }

    /// `name.pem` (the chain the origin serves: leaf, then `extraChain`) and `name.key`.
    func mint(
        _ name: String,
        extensions: String,
        issuer: String = "root",
        from start: Date = Date().addingTimeInterval(-3600),
        until end: Date = Date().addingTimeInterval(86_400),
        extraChain: [String] = []
    ) throws {
        try openssl([
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=\(name)",
            "-keyout", "\(name).key", "-out", "\(name).csr",
        ])
        try extensions.write(toFile: directory + "/\(name).ext", atomically: true, encoding: .utf8)
        if issuer == "self" {
            try openssl([
                "x509", "-req", "-in", "\(name).csr", "-signkey", "\(name).key", "-days", "2", "-extfile", "\(name).ext",
                "-out", "\(name).leaf.pem",
            ])
        } else {
            try openssl([
                "ca", "-batch", "-config", "ca.cnf", "-cert", "\(issuer).pem", "-keyfile", "\(issuer).key",
                "-in", "\(name).csr", "-out", "\(name).leaf.pem", "-startdate", Self.stamp(start),
                "-enddate", Self.stamp(end), "-extfile", "\(name).ext", "-notext",
            ])
        }
        var chain = try String(contentsOfFile: directory + "/\(name).leaf.pem", encoding: .utf8)
        for extra in extraChain { chain += try String(contentsOfFile: directory + "/\(extra).pem", encoding: .utf8) }
        try chain.write(toFile: directory + "/\(name).pem", atomically: true, encoding: .utf8)
    }

    func chain(_ name: String) -> String { directory + "/\(name).pem" }
    func key(_ name: String) -> String { directory + "/\(name).key" }
}

/// The upstream verification matrix: each bad upstream fails with its reason and the client never gets a
/// trusted connection; a valid chain and an IP SAN are accepted.
@Suite struct UpstreamVerificationTests {
    static let server = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"

    /// An HTTPS origin (origin.py with `arguments` besides its certificate) and an inspecting proxy that trusts the
    /// test PKI for upstreams: the origin, its port, the proxy, its port and the inspection CA's directory.
    static func inspectedOrigin(_ pki: TestPKI, _ arguments: [String]) throws
        -> (origin: ChildProcess, port: Int, proxy: ChildProcess, proxyPort: Int, caDirectory: String)
    {
        let origin = try ChildProcess(
            Paths.which("python3"),
            [Paths.originScript, "--mode", "https", "--host", "127.0.0.1", "--cert", pki.serverCertificate, "--key", pki.serverKey]
                + arguments)
        let line = try origin.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }
        guard let port = Int(line.dropFirst(5)) else { throw TestFailure("origin printed \(line)") }
        let caDirectory = try InspectionTests.makeCA(in: pki.directory)
        let (proxy, proxyPort) = try InspectionTests.startProxy([
            "KAIZEN_CA_CERT": caDirectory + "/ca.pem", "KAIZEN_CA_KEY": caDirectory + "/ca.key",
            "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
        ])
        return (origin, port, proxy, proxyPort, caDirectory)
    }

    @Test func eachBadUpstreamFailsWithItsReasonAndGoodOnesPass() throws {
        let certificates = try UpstreamCertificates()
        let localhost = "subjectAltName=DNS:localhost\n" + Self.server
        let day: TimeInterval = 86_400
        try certificates.mint("expired", extensions: localhost, from: Date().addingTimeInterval(-3 * day), until: Date().addingTimeInterval(-day))
        try certificates.mint("future", extensions: localhost, from: Date().addingTimeInterval(day), until: Date().addingTimeInterval(2 * day))
        try certificates.mint("wrong-host", extensions: "subjectAltName=DNS:other.test\n" + Self.server)
        try certificates.mint("self-signed", extensions: localhost, issuer: "self")
        try certificates.mint("unknown-root", extensions: localhost, issuer: "stranger")
        try certificates.mint("not-a-ca", extensions: "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,keyCertSign,digitalSignature\n")
        try certificates.mint("under-not-a-ca", extensions: localhost, issuer: "not-a-ca", extraChain: ["not-a-ca.leaf"])
        try certificates.mint("intermediate", extensions: "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n")
        try certificates.mint("via-intermediate", extensions: localhost, issuer: "intermediate", extraChain: ["intermediate.leaf"])
        try certificates.mint("dns-only", extensions: localhost)
        try certificates.mint("ip-san", extensions: "subjectAltName=IP:127.0.0.1\n" + Self.server)
        // Its subject's CN is "localhost", and it has no subjectAltName: a name only there is not taken.
        try certificates.mint("localhost", extensions: Self.server)
        try certificates.mint("partial-wildcard", extensions: "subjectAltName=DNS:api*.example.test\n" + Self.server)

        let caDirectory = try InspectionTests.makeCA(in: certificates.directory)
        let (proxy, proxyPort) = try InspectionTests.startProxy([
            "KAIZEN_CA_CERT": caDirectory + "/ca.pem", "KAIZEN_CA_KEY": caDirectory + "/ca.key",
            "KAIZEN_UPSTREAM_CA_FILE": certificates.root,
        ])
        let cases: [(name: String, host: String, expected: String?)] = [
            ("expired", "localhost", "certificate has expired"),
            ("future", "localhost", "certificate is not yet valid"),
            ("wrong-host", "localhost", "hostname mismatch"),
            ("self-signed", "localhost", "self-signed certificate"),
            ("unknown-root", "localhost", "unable to get local issuer certificate"),
            ("under-not-a-ca", "localhost", "invalid CA certificate"),
            ("dns-only", "127.0.0.1", "IP address mismatch"),
            ("localhost", "localhost", "hostname mismatch"),
            ("partial-wildcard", "api1.example.test", "hostname mismatch"),
            ("via-intermediate", "localhost", nil),
            ("ip-san", "127.0.0.1", nil),
        ]
        var origins: [ChildProcess] = []
        defer { withExtendedLifetime(origins) {} }
        for (index, testCase) in cases.enumerated() {
            let (origin, port) = try ChildProcess.origin(
                mode: "https", cert: certificates.chain(testCase.name), key: certificates.key(testCase.name))
            origins.append(origin)
            let result = try runCommand(
                Paths.which("curl"),
                ["-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "--cacert", caDirectory + "/ca.pem",
                 // A name no resolver knows: the CONNECT goes to 127.0.0.1, the SNI (what is verified) stays.
                 "--connect-to", "api1.example.test:\(port):127.0.0.1:\(port)", "https://\(testCase.host):\(port)/hello"],
                timeout: 30
            )
            let lines = try proxy.waitForLines(count: index + 1, timeout: 20) { $0.contains("\"action\"") }
            let action = lines[index]
            if let expected = testCase.expected {
                #expect(result.status == 35 && result.stdout.isEmpty, "\(testCase.name): \(result.status) \(result.stdout)")
                #expect(action.contains("upstream certificate verification failed: \(expected)"), "\(testCase.name): \(action)")
                #expect(action.contains("\"intercepted\":false"), "\(testCase.name)")
            } else {
                #expect(result.status == 0 && result.stdout == "hello from origin", "\(testCase.name): \(result.stderr)")
                #expect(action.contains("\"intercepted\":true") && action.contains("\"path\":\"/hello\""), "\(testCase.name): \(action)")
            }
        }
        // The log names the setting that trusts a private CA, once, however many upstreams failed.
        _ = try proxy.waitForStderr(containing: "trust it with KAIZEN_UPSTREAM_CA_FILE", timeout: 10)
        #expect(proxy.stderr.components(separatedBy: "KAIZEN_UPSTREAM_CA_FILE").count == 2, "\(proxy.stderr)")
    }
    /// The proxy's own CA is never trusted for upstreams, whichever trust store holds it: an origin whose leaf the
    /// inspection CA signed (what anyone holding its key can make) is refused as any unknown root is, and the action
    /// records the verification error. The CA put in KAIZEN_UPSTREAM_CA_FILE, a re-issued copy of it (same subject and
    /// key, other dates and serial) there, and the bundle `ca doctor --write-bundle` writes exported as SSL_CERT_FILE
    /// in the proxy's own environment: each is named in a warning at start, with the fix. An upstream of a CA the
    /// proxy does trust still passes through the same trust store.
    @Test func theInspectionCAIsNeverTrustedForUpstreams() throws {
        let pki = try TestPKI.mint()
        let caDirectory = try InspectionTests.makeCA(in: pki.directory)
        let ca = caDirectory + "/ca.pem"
        let caKey = caDirectory + "/ca.key"
        let directory = pki.directory
        let openssl = Paths.which("openssl")
        try ("subjectAltName=DNS:localhost\n" + Self.server).write(toFile: directory + "/mitm.ext", atomically: true, encoding: .utf8)
        for arguments in [
            ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", directory + "/mitm.key",
             "-out", directory + "/mitm.csr", "-subj", "/CN=localhost"],
            ["x509", "-req", "-in", directory + "/mitm.csr", "-CA", ca, "-CAkey", caKey, "-set_serial", "77", "-days", "1",
             "-extfile", directory + "/mitm.ext", "-out", directory + "/mitm.pem"],
            ["x509", "-in", ca, "-signkey", caKey, "-days", "5", "-set_serial", "99", "-out", directory + "/reissued.pem"],
        ] {
            let made = try runCommand(openssl, arguments, timeout: 30)
            #expect(made.status == 0, "\(made.stderr)")
        }
        let bundle = directory + "/bundle.pem"
        let doctor = try ChildProcess(
            Paths.proxyBinary, ["ca", "doctor", "--write-bundle", bundle],
            environment: ProxyEnvironment.make(["KAIZEN_CA_CERT": ca, "KAIZEN_CA_KEY": caKey]))
        #expect(try doctor.waitForExit(timeout: 30) == 0, "\(doctor.stderr)")
        let (mitmOrigin, mitmPort) = try ChildProcess.origin(mode: "https", cert: directory + "/mitm.pem", key: directory + "/mitm.key")
        let (goodOrigin, goodPort) = try ChildProcess.origin(mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        defer { withExtendedLifetime((mitmOrigin, goodOrigin)) {} }
        let reissued = directory + "/reissued.pem"
        let cases: [(environment: [String: String], warning: String)] = [
            (["KAIZEN_UPSTREAM_CA_FILE": ca], "KAIZEN_UPSTREAM_CA_FILE=\(ca) holds the inspection CA (KAIZEN_CA_CERT, "),
            (["KAIZEN_UPSTREAM_CA_FILE": reissued], "KAIZEN_UPSTREAM_CA_FILE=\(reissued) holds the inspection CA (KAIZEN_CA_CERT, "),
            (["SSL_CERT_FILE": bundle, "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate],
             "SSL_CERT_FILE=\(bundle) in the proxy's own environment holds the inspection CA (KAIZEN_CA_CERT, "),
        ]
        for testCase in cases {
            let (proxy, proxyPort) = try InspectionTests.startProxy(
                ["KAIZEN_CA_CERT": ca, "KAIZEN_CA_KEY": caKey].merging(testCase.environment) { $1 })
            _ = try proxy.waitForStderr(containing: testCase.warning, timeout: 10)
            #expect(proxy.stderr.contains("it is never trusted for upstreams"), "\(proxy.stderr)")
            func curl(_ port: Int) throws -> CommandResult {
                try runCommand(
                    Paths.which("curl"),
                    ["-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "--cacert", ca,
                     "https://localhost:\(port)/hello"],
                    timeout: 30)
            }
            let refused = try curl(mitmPort)
            #expect(refused.status == 35 && refused.stdout.isEmpty, "\(testCase.environment): \(refused)")
            let action = try proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
            #expect(
                action.contains(
                    "upstream certificate verification failed: unable to get local issuer certificate: its issuer is the inspection CA (KAIZEN_CA_CERT)"),
                "\(action)")
            #expect(action.contains(#""inspection":"upstream not trusted""#) && action.contains(#""intercepted":false"#), "\(action)")
            if testCase.environment["SSL_CERT_FILE"] != nil {
                let served = try curl(goodPort)
                #expect(served.status == 0 && served.stdout == "hello from origin", "\(served)")
            }
        }
    }

    /// The inspection CA as a sub-CA of an organisation's root that the proxy trusts for upstreams (the root in the
    /// system store of a corporate image): no store lookup returns the inspection CA, but an upstream can send it as an
    /// intermediate with a leaf it signed. That chain is refused all the same, and the action says why; a leaf the root
    /// signed directly still passes.
    @Test func anUpstreamSendingTheInspectionCAAsAnIntermediateIsRefused() throws {
        let pki = try TestPKI.mint()
        let directory = pki.directory
        let openssl = Paths.which("openssl")
        let root = directory + "/org-root"
        let sub = directory + "/inspection-sub"
        try "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
            .write(toFile: directory + "/sub.ext", atomically: true, encoding: .utf8)
        try ("subjectAltName=DNS:localhost\n" + Self.server).write(toFile: directory + "/leaf.ext", atomically: true, encoding: .utf8)
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        for arguments in [
            ["req", "-x509"] + ec + ["-keyout", root + ".key", "-out", root + ".pem", "-days", "2", "-subj", "/CN=Org Root",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ["req"] + ec + ["-keyout", sub + ".key", "-out", sub + ".csr", "-subj", "/CN=Org Inspection CA"],
            ["x509", "-req", "-in", sub + ".csr", "-CA", root + ".pem", "-CAkey", root + ".key", "-set_serial", "2",
             "-days", "2", "-extfile", directory + "/sub.ext", "-out", sub + ".pem"],
            // What anyone holding the inspection CA's key can make: a leaf for any name, sent with the CA.
            ["req"] + ec + ["-keyout", directory + "/forged.key", "-out", directory + "/forged.csr", "-subj", "/CN=localhost"],
            ["x509", "-req", "-in", directory + "/forged.csr", "-CA", sub + ".pem", "-CAkey", sub + ".key", "-set_serial", "3",
             "-days", "1", "-extfile", directory + "/leaf.ext", "-out", directory + "/forged-leaf.pem"],
            ["req"] + ec + ["-keyout", directory + "/real.key", "-out", directory + "/real.csr", "-subj", "/CN=localhost"],
            ["x509", "-req", "-in", directory + "/real.csr", "-CA", root + ".pem", "-CAkey", root + ".key", "-set_serial", "4",
             "-days", "1", "-extfile", directory + "/leaf.ext", "-out", directory + "/real.pem"],
        ] {
            let made = try runCommand(openssl, arguments, timeout: 30)
            try #require(made.status == 0, "\(made.stderr)")
        }
        _ = chmod(sub + ".key", 0o600)
        let forgedChain = try String(contentsOfFile: directory + "/forged-leaf.pem", encoding: .utf8)
            + String(contentsOfFile: sub + ".pem", encoding: .utf8)
        try forgedChain.write(toFile: directory + "/forged.pem", atomically: true, encoding: .utf8)
        let (forgedOrigin, forgedPort) = try ChildProcess.origin(
            mode: "https", cert: directory + "/forged.pem", key: directory + "/forged.key")
        let (realOrigin, realPort) = try ChildProcess.origin(mode: "https", cert: directory + "/real.pem", key: directory + "/real.key")
        defer { withExtendedLifetime((forgedOrigin, realOrigin)) {} }
        let (proxy, proxyPort) = try InspectionTests.startProxy([
            "KAIZEN_CA_CERT": sub + ".pem", "KAIZEN_CA_KEY": sub + ".key", "KAIZEN_UPSTREAM_CA_FILE": root + ".pem",
        ])
        func curl(_ port: Int) throws -> CommandResult {
            try runCommand(
                Paths.which("curl"),
                ["-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "--cacert", root + ".pem",
                 "https://localhost:\(port)/hello"],
                timeout: 30)
        }
        let refused = try curl(forgedPort)
        #expect(refused.status == 35 && refused.stdout.isEmpty, "\(refused)")
        let action = try proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
        #expect(action.contains(
            "upstream certificate verification failed: the chain includes the inspection CA (KAIZEN_CA_CERT), which the proxy never trusts for its own connections"),
            "\(action)")
        #expect(action.contains(#""inspection":"upstream not trusted""#), "\(action)")
        let served = try curl(realPort)
        #expect(served.status == 0 && served.stdout == "hello from origin", "\(served)")
    }

    /// An upstream that refuses the handshake is not an upstream that is not trusted: a client whose name the upstream
    /// does not serve gets the upstream's own alert (unrecognized_name), as it would directly; the action says the
    /// handshake failed and why; the verification failures metric does not move, the handshake failures one does.
    @Test func anUpstreamRefusingTheNameIsRelayedAndNotCalledUntrusted() throws {
        let pki = try TestPKI.mint()
        let (origin, port, proxy, proxyPort, caDirectory) = try Self.inspectedOrigin(pki, ["--only-name", "localhost"])
        func curl(_ host: String) throws -> CommandResult {
            try runCommand(
                Paths.which("curl"),
                ["-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "--cacert", caDirectory + "/ca.pem",
                 "--connect-to", "\(host):\(port):127.0.0.1:\(port)", "https://\(host):\(port)/hello"],
                timeout: 30)
        }
        let refused = try curl("elsewhere.test")
        #expect(refused.status == 35 && refused.stderr.contains("unrecognized name"), "\(refused)")
        let served = try curl("localhost")
        #expect(served.status == 0 && served.stdout == "hello from origin", "\(served)")
        let actions = try proxy.waitForLines(count: 2, timeout: 20) { $0.contains("\"action\"") }
        #expect(actions[0].contains(#""inspection":"upstream handshake failed""#) && actions[0].contains("unrecognized name"), "\(actions[0])")
        #expect(actions[1].contains(#""intercepted":true"#), "\(actions[1])")
        let metrics = try AdminTests().get(try proxy.adminPort(), "/metrics").body
        #expect(AdminTests.value(metrics, "kaizen_egress_upstream_handshake_failures_total") == 1, "\(metrics)")
        #expect(AdminTests.value(metrics, "kaizen_egress_upstream_verification_failures_total") == 0, "\(metrics)")
        withExtendedLifetime(origin) {}
    }
    /// An upstream that requires a client certificate (mutual TLS) cannot be inspected: the proxy has no certificate of
    /// the agent's to present. The first connection fails and its action says why; the agent's next connections to the
    /// name pass through untouched (as after a client refused the minted certificate), so a client with its own
    /// certificate reaches the upstream with it. The same under TLS 1.3, where the server's refusal comes after the
    /// proxy's side of the handshake is over, and TLS 1.2, where it ends the handshake.
    @Test(arguments: [false, true])
    func anUpstreamRequiringAClientCertificatePassesThroughAfterItsFirstRefusal(tls12: Bool) throws {
        let pki = try TestPKI.mint()
        let openssl = Paths.which("openssl")
        let client = pki.directory + "/client"
        for arguments in [
            ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", client + ".key",
             "-out", client + ".csr", "-subj", "/CN=agent"],
            ["x509", "-req", "-in", client + ".csr", "-CA", pki.caCertificate, "-CAkey", pki.directory + "/ca.key",
             "-CAcreateserial", "-out", client + ".pem", "-days", "2"],
        ] {
            let made = try runCommand(openssl, arguments, timeout: 30)
            #expect(made.status == 0, "\(made.stderr)")
        }
        let (origin, port, proxy, proxyPort, caDirectory) = try Self.inspectedOrigin(pki, ["--client-ca", pki.caCertificate] + (tls12 ? ["--tls12"] : []))
        // The client trusts both CAs: the minted leaf (the first time) and the origin's own certificate (passed through).
        let trust = pki.directory + "/both.pem"
        try (String(contentsOfFile: caDirectory + "/ca.pem", encoding: .utf8) + String(contentsOfFile: pki.caCertificate, encoding: .utf8))
            .write(toFile: trust, atomically: true, encoding: .utf8)
        func curl() throws -> CommandResult {
            try runCommand(
                Paths.which("curl"),
                ["-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "--cacert", trust,
                 "--cert", client + ".pem", "--key", client + ".key", "https://localhost:\(port)/hello"],
                timeout: 30)
        }
        let first = try curl()
        #expect(first.status != 0 && first.stdout.isEmpty, "\(first)")
        let second = try curl()
        #expect(second.status == 0 && second.stdout == "hello from origin", "\(second)")
        let actions = try proxy.waitForLines(count: 2, timeout: 20) { $0.contains("\"action\"") }
        #expect(actions[0].contains(#""inspection":"upstream requires a client certificate""#), "\(actions[0])")
        #expect(actions[1].contains(#""inspection":"the upstream required a client certificate recently (mutual TLS)""#), "\(actions[1])")
        _ = try proxy.waitForStderr(containing: "requires a client certificate (mutual TLS", timeout: 10)
        let metrics = try AdminTests().get(try proxy.adminPort(), "/metrics").body
        #expect(AdminTests.value(metrics, "kaizen_egress_upstream_handshake_failures_total") == 1, "\(metrics)")
        #expect(AdminTests.value(metrics, "kaizen_egress_upstream_verification_failures_total") == 0, "\(metrics)")
        withExtendedLifetime(origin) {}
    }
    /// An upstream that asks for a client certificate but does not require one (optional client authentication) is
    /// inspected as any: no failure, no pass-through learnt.
    @Test func anUpstreamAskingForAnOptionalClientCertificateIsInspected() throws {
        let pki = try TestPKI.mint()
        let (origin, port, proxy, proxyPort, caDirectory) = try Self.inspectedOrigin(pki, ["--client-ca", pki.caCertificate, "--client-cert-optional"])
        for _ in 0..<2 {
            let result = try runCommand(
                Paths.which("curl"),
                ["-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "--cacert", caDirectory + "/ca.pem",
                 "https://localhost:\(port)/hello"],
                timeout: 30)
            #expect(result.status == 0 && result.stdout == "hello from origin", "\(result)")
        }
        let actions = try proxy.waitForLines(count: 2, timeout: 20) { $0.contains("\"action\"") }
        #expect(actions.allSatisfy { $0.contains(#""intercepted":true"#) && !$0.contains("\"inspection\"") }, "\(actions)")
        withExtendedLifetime(origin) {}
    }
    /// Under TLS 1.3 an upstream refuses a missing client certificate only after the proxy's side of the handshake is
    /// over, so the client's first request may already be on its way: it is answered 502, and its action says the
    /// upstream requires a client certificate.
    @Test func aRequestSentBeforeTheUpstreamRefusedTheMissingCertificateSaysWhy() throws {
        let pki = try TestPKI.mint()
        let origin = try ChildProcess(
            Paths.which("python3"),
            [Paths.originScript, "--mode", "mutual-tls-slow", "--host", "127.0.0.1", "--cert", pki.serverCertificate,
             "--key", pki.serverKey, "--client-ca", pki.caCertificate, "--slow-finish", "1"])
        let line = try origin.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }
        let port = try #require(Int(line.dropFirst(5)))
        let caDirectory = try InspectionTests.makeCA(in: pki.directory)
        let (proxy, proxyPort) = try InspectionTests.startProxy([
            "KAIZEN_CA_CERT": caDirectory + "/ca.pem", "KAIZEN_CA_KEY": caDirectory + "/ca.key",
            "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
        ])
        let result = try runCommand(
            Paths.which("curl"),
            ["-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "--cacert", caDirectory + "/ca.pem",
             "-w", "\n%{http_code}", "https://localhost:\(port)/hello"],
            timeout: 30)
        #expect(result.stdout.hasSuffix("\n502"), "\(result)")
        let action = try proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
        #expect(action.contains(#""inspection":"upstream requires a client certificate""#) && action.contains(#""status":502"#), "\(action)")
        let metrics = try AdminTests().get(try proxy.adminPort(), "/metrics").body
        #expect(AdminTests.value(metrics, "kaizen_egress_upstream_handshake_failures_total") == 1, "\(metrics)")
        withExtendedLifetime(origin) {}
    }
}

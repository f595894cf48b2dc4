import Foundation
import TestSupport
import Testing

/// The inspection CA's files as a user gets them wrong, against the binary: `ca doctor`, the proxy's start and a
/// reload on SIGHUP each refuse with one line, at once, and never show the key.
@Suite struct CAFileTests {
    /// A CA made by `ca init`, and the same key encrypted (`enc.key`, 0600).
    static func caWithEncryptedKey() throws -> (pki: TestPKI, ca: String, encryptedKey: String) {
        let pki = try TestPKI.mint()
        let ca = try InspectionTests.makeCA(in: pki.directory)
        let encrypted = ca + "/enc.key"
        let made = try runCommand(
            Paths.which("openssl"), ["pkey", "-in", ca + "/ca.key", "-aes256", "-passout", "pass:secret", "-out", encrypted])
        guard made.status == 0 else { throw TestFailure("openssl pkey: \(made.stderr)") }
        chmod(encrypted, 0o600)
        return (pki, ca, encrypted)
    }

    /// `command` under `script`, so that it has a terminal, as a user at a shell has: OpenSSL asks for a passphrase
    /// there, where a test's pipes would have made it fail. `timeout` bounds a program that waits at the prompt (which
    /// holds SIGTERM: hence SIGKILL).
    static func withTerminal(_ command: [String], environment: [String: String], limit: Int = 20) throws -> ChildProcess {
        let line = (["exec", Paths.which("timeout"), "--foreground", "-s", "KILL", "\(limit)"] + command)
            .map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
            .joined(separator: " ")
        return try ChildProcess(
            Paths.which("script"), ["-qec", "echo pid=$$; " + line, "/dev/null"],
            environment: ProxyEnvironment.make(environment))
    }

    /// The terminal's text (carriage returns dropped).
    static func text(_ child: ChildProcess) -> String {
        child.stdoutLines.map { $0.replacingOccurrences(of: "\r", with: "") }.joined(separator: "\n") + child.stderr
    }

    @Test func anEncryptedKeyIsRefusedAtOnceEvenWithATerminal() throws {
        let (pki, ca, encrypted) = try Self.caWithEncryptedKey()
        _ = pki
        let settings = ["KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": encrypted]
        for arguments in [["ca", "doctor"], ["--local", "--port", "0"]] {
            let started = Date()
            let child = try Self.withTerminal([Paths.proxyBinary] + arguments, environment: settings)
            let status = try child.waitForExit(timeout: 40)
            let text = Self.text(child)
            #expect(status == 2, "\(arguments): exit \(status): \(text)")
            #expect(text.contains("KAIZEN_CA_KEY=\(encrypted) is encrypted"), "\(arguments): \(text)")
            #expect(!text.lowercased().contains("pass phrase"), "\(arguments): \(text)")
            #expect(Date().timeIntervalSince(started) < 15, "\(arguments): took \(Date().timeIntervalSince(started))s")
        }
    }

    /// A reload that finds the key encrypted keeps the current settings and says why; SIGTERM still stops the proxy.
    @Test func aReloadToAnEncryptedKeyFailsAtOnceAndTheProxyStillStops() throws {
        let (pki, ca, encrypted) = try Self.caWithEncryptedKey()
        let key = ca + "/signing.key"
        #expect(link(ca + "/ca.key", key) == 0)
        let terminal = try Self.withTerminal(
            [Paths.proxyBinary, "--local", "--port", "0"],
            environment: ["KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": key, "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate],
            limit: 60)
        let pidLine = try terminal.waitForLine(timeout: 30) { $0.hasPrefix("pid=") }
        let timeoutPid = String(pidLine.dropFirst(4).prefix(while: \.isNumber))
        _ = try terminal.waitForLine(timeout: 30) { $0.contains("proxy listening on") }
        let children = try runCommand(Paths.which("pgrep"), ["-P", timeoutPid])
        let proxyPid = try #require(pid_t(children.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), "\(children)")
        #expect(rename(encrypted, key) == 0)
        kill(proxyPid, SIGHUP)
        let refused = try terminal.waitForLine(timeout: 20) { $0.contains("SIGHUP: KAIZEN_CA_KEY") }
        #expect(refused.contains("is encrypted") && refused.contains("current settings are kept"), "\(refused)")
        kill(proxyPid, SIGTERM)
        #expect(try terminal.waitForExit(timeout: 70) == 0, "\(Self.text(terminal))")
        #expect(!Self.text(terminal).lowercased().contains("pass phrase"), "\(Self.text(terminal))")
    }

    /// The key appended to the certificate file: `ca doctor --write-bundle` refuses it and writes no bundle (which would
    /// hand the key to every client), and the proxy does not start; neither shows the key.
    @Test func aKeyInTheCertificateFileIsRefusedAndNeverBundled() throws {
        let pki = try TestPKI.mint()
        let ca = try InspectionTests.makeCA(in: pki.directory)
        let key = try String(contentsOfFile: ca + "/ca.key", encoding: .utf8)
        try (try String(contentsOfFile: ca + "/ca.pem", encoding: .utf8) + key).write(
            toFile: ca + "/combo.pem", atomically: true, encoding: .utf8)
        let settings = ["KAIZEN_CA_CERT": ca + "/combo.pem", "KAIZEN_CA_KEY": ca + "/ca.key"]
        let bundle = pki.directory + "/bundle.pem"
        for arguments in [["ca", "doctor", "--write-bundle", bundle], ["--local", "--port", "0"]] {
            let child = try ChildProcess(Paths.proxyBinary, arguments, environment: ProxyEnvironment.make(settings))
            #expect(try child.waitForExit(timeout: 30) == 2)
            let lines = child.stderr.split(separator: "\n")
            #expect(lines.count == 1 && lines[0].hasPrefix("kaizen-egress: KAIZEN_CA_CERT=\(ca)/combo.pem holds a private key"), "\(child.stderr)")
            #expect(child.stderr.contains("keep the key in KAIZEN_CA_KEY only"), "\(child.stderr)")
            for line in key.split(separator: "\n") where !line.hasPrefix("-----") {
                #expect(!child.stderr.contains(line) && !child.stdoutLines.joined().contains(line))
            }
        }
        #expect(!FileManager.default.fileExists(atPath: bundle))
    }

    /// The bundle starts from the system store proper, not SSL_CERT_FILE (which the doctor tells users to set to the
    /// bundle): after a rotation the new bundle no longer trusts the old CA, and no certificate is in it twice.
    @Test func theBundleIsTheSystemStorePlusThisCAOnce() throws {
        let pki = try TestPKI.mint()
        for name in ["old", "new"] { try FileManager.default.createDirectory(atPath: pki.directory + "/" + name, withIntermediateDirectories: false) }
        let old = try InspectionTests.makeCA(in: pki.directory + "/old")
        let new = try InspectionTests.makeCA(in: pki.directory + "/new")
        func doctor(_ ca: String, _ bundle: String, _ extra: [String] = [], sslCertFile: String = "") throws -> String {
            let child = try ChildProcess(
                Paths.proxyBinary, ["ca", "doctor", "--write-bundle", bundle] + extra,
                environment: ProxyEnvironment.make(
                    ["KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": ca + "/ca.key", "SSL_CERT_FILE": sslCertFile]))
            #expect(try child.waitForExit(timeout: 30) == 0, "\(child.stderr)")
            return child.stdoutLines.joined(separator: "\n")
        }
        func certificates(_ path: String) throws -> [String] {
            try String(contentsOfFile: path, encoding: .utf8).components(separatedBy: "-----END CERTIFICATE-----")
                .dropLast().map { String($0.drop { $0 == "\n" }) + "-----END CERTIFICATE-----\n" }
        }
        let oldCA = try String(contentsOfFile: old + "/ca.pem", encoding: .utf8)
        let newCA = try String(contentsOfFile: new + "/ca.pem", encoding: .utf8)
        let first = try doctor(old, pki.directory + "/first.pem")
        let system = try #require(first.split(separator: "\n").first { $0.contains("system CAs from") }, "\(first)")
        let systemCount = try certificates(pki.directory + "/first.pem").count - 1
        #expect(systemCount > 10 && system.contains("the \(systemCount) system CAs from /") && system.hasSuffix("plus this CA."), "\(system)")
        // Rotated: SSL_CERT_FILE names the first bundle, as the doctor said to set it.
        let second = try doctor(new, pki.directory + "/second.pem", sslCertFile: pki.directory + "/first.pem")
        #expect(!second.contains("first.pem") && second.contains(String(system.split(separator: "from ")[1].prefix { $0 != " " })), "\(second)")
        let rotated = try certificates(pki.directory + "/second.pem")
        #expect(rotated.count == systemCount + 1 && rotated.last == newCA && !rotated.contains(oldCA))
        // A store that already holds the CA: it is not added again.
        let third = try doctor(new, pki.directory + "/third.pem", ["--system-cas", pki.directory + "/second.pem"])
        #expect(third.contains("the \(systemCount + 1) system CAs from \(pki.directory)/second.pem (this CA is already among them)."), "\(third)")
        #expect(try certificates(pki.directory + "/third.pem") == rotated)
        // A store with a block OpenSSL cannot read: the certificates after it would be missing, so no bundle is written.
        let broken = pki.directory + "/broken.pem"
        try (oldCA + "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n" + newCA)
            .write(toFile: broken, atomically: true, encoding: .utf8)
        let refused = try ChildProcess(
            Paths.proxyBinary, ["ca", "doctor", "--write-bundle", pki.directory + "/fourth.pem", "--system-cas", broken],
            environment: ProxyEnvironment.make(["KAIZEN_CA_CERT": new + "/ca.pem", "KAIZEN_CA_KEY": new + "/ca.key"]))
        #expect(try refused.waitForExit(timeout: 30) != 0)
        #expect(refused.stderr.contains("holds 3 certificates but only the first 1 could be read"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: pki.directory + "/fourth.pem"))
    }
}

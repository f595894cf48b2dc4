import Foundation
import Interception
import OpenSSLTLS
import TestSupport
import Testing

/// CAs with one defect each, minted with the openssl command line per test run.
struct CAFixtures {
    let directory: URL

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("kaizen-ca-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    @discardableResult
    func openssl(_ arguments: [String]) throws -> Int32 {
        try runCommand("/usr/bin/openssl", arguments, directory: directory.path).status
    }

    /// A self-signed certificate `name.pem` with key `name.key` (0600) and these extensions.
    func make(_ name: String, extensions: [String], key: [String] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]) throws {
        let status = try openssl(
            ["req", "-x509"] + key + ["-nodes", "-days", "30",
             "-subj", "/CN=\(name)", "-keyout", "\(name).key", "-out", "\(name).pem", "-config", "/dev/null",
             "-sha256"] + extensions.flatMap { ["-addext", $0] })
        guard status == 0 else { throw CocoaError(.fileWriteUnknown) }
        chmod(path("\(name).key"), 0o600)
    }

    /// A certificate `name.pem` (key `name.key`, 0600) signed by `issuer`'s key with `digest`.
    func sign(_ name: String, by issuer: String, extensions: [String] = good, digest: String = "-sha256") throws {
        try (extensions + ["authorityKeyIdentifier=keyid"]).joined(separator: "\n")
            .write(toFile: path("\(name).ext"), atomically: true, encoding: .utf8)
        let request = try openssl(
            ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=\(name)",
             "-keyout", "\(name).key", "-out", "\(name).csr", "-config", "/dev/null"])
        let signed = try openssl(
            ["x509", "-req", "-in", "\(name).csr", "-CA", "\(issuer).pem", "-CAkey", "\(issuer).key", "-set_serial", "7",
             "-days", "30", digest, "-extfile", "\(name).ext", "-out", "\(name).pem"])
        guard request == 0, signed == 0 else { throw CocoaError(.fileWriteUnknown) }
        chmod(path("\(name).key"), 0o600)
    }

    /// `names`' certificates, one after the other, as `file`.
    func concatenate(_ names: [String], as file: String) throws {
        let text = try names.map { try String(contentsOfFile: path("\($0).pem"), encoding: .utf8) }.joined()
        try text.write(toFile: path(file), atomically: true, encoding: .utf8)
    }

    static let good = ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign", "subjectKeyIdentifier=hash"]
}

@Suite struct CustomerCATests {
    let fixtures: CAFixtures
    var now: Int64 { Int64(Date().timeIntervalSince1970) }

    init() throws {
        fixtures = try CAFixtures()
    }

    func load(_ name: String, key: String? = nil, now: Int64? = nil) throws -> [String] {
        try CustomerCA.load(
            certificateFile: fixtures.path("\(name).pem"), keyFile: fixtures.path("\(key ?? name).key"), now: now ?? self.now
        ).warnings
    }

    func problem(_ name: String, key: String? = nil, now: Int64? = nil) -> CustomerCA.Problem? {
        do {
            _ = try CustomerCA.load(
                certificateFile: fixtures.path("\(name).pem"), keyFile: fixtures.path("\(key ?? name).key"),
                now: now ?? self.now)
            return nil
        } catch {
            return error
        }
    }

    @Test func aGoodCALoadsWithoutWarnings() throws {
        try fixtures.make("good", extensions: CAFixtures.good)
        #expect(try load("good") == [])
    }

    @Test(arguments: [
        ("leaf", ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,keyCertSign", "subjectKeyIdentifier=hash"], "is not a CA certificate"),
        ("no-bc", ["keyUsage=critical,keyCertSign", "subjectKeyIdentifier=hash"], "is not a CA certificate"),
        ("soft-bc", ["basicConstraints=CA:TRUE", "keyUsage=critical,keyCertSign", "subjectKeyIdentifier=hash"], "not marked critical"),
        ("no-ku", ["basicConstraints=critical,CA:TRUE", "subjectKeyIdentifier=hash"], "has no keyUsage"),
        ("ku-sign", ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,digitalSignature", "subjectKeyIdentifier=hash"], "without keyCertSign"),
        ("no-ski", ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign", "subjectKeyIdentifier=none"], "no subjectKeyIdentifier"),
        ("eku-client", CAFixtures.good + ["extendedKeyUsage=clientAuth"], "without serverAuth"),
    ])
    func eachDefectRefusesWithItsOwnMessage(name: String, extensions: [String], message: String) throws {
        try fixtures.make(name, extensions: extensions)
        let found = try #require(problem(name))
        #expect(found.variable == "KAIZEN_CA_CERT")
        #expect(found.message.contains(message), "\(found.message)")
        #expect(found.message.contains("KAIZEN_CA_CERT (CN = \(name))"))
        #expect(!found.message.contains("\n"))
    }

    /// A CA key weaker than TLS's security level allows is refused at once, not on every inspected connection.
    @Test func aWeakKeyIsRefused() throws {
        #expect(OpenSSLCertificateAuthority.minimumSecurityBits >= 112)
        try fixtures.make("rsa1024", extensions: CAFixtures.good, key: ["-newkey", "rsa:1024"])
        let weak = try #require(problem("rsa1024"))
        #expect(weak.variable == "KAIZEN_CA_CERT" && !weak.message.contains("\n"))
        #expect(weak.message.hasPrefix("KAIZEN_CA_CERT (CN = rsa1024) has too weak a key: RSA 1024-bit, 80 security bits, below the"), "\(weak.message)")
        #expect(weak.message.contains("kaizen-egress ca init DIR"), "\(weak.message)")
        try fixtures.make("rsa2048", extensions: CAFixtures.good, key: ["-newkey", "rsa:2048"])
        #expect(try load("rsa2048") == [])
        // An intermediate CA its root signed with SHA-1 ("ca md too weak"); a self-signed root's own signature is
        // not checked by TLS, nor here.
        try fixtures.make("root", extensions: CAFixtures.good)
        try fixtures.sign("sha1", by: "root", digest: "-sha1")
        let sha1 = try #require(problem("sha1"))
        #expect(sha1.message.hasPrefix("KAIZEN_CA_CERT (CN = sha1) has too weak a signature: ecdsa-with-SHA1"), "\(sha1.message)")
        try fixtures.sign("sha256", by: "root")
        #expect(try load("sha256") == [])
    }

    /// The certificates after the CA are its issuers, in order; every block is read.
    @Test func theCertificatesAfterTheCAAreItsChain() throws {
        try fixtures.make("root", extensions: CAFixtures.good)
        try fixtures.make("other", extensions: CAFixtures.good)
        try fixtures.sign("mid", by: "root")
        try fixtures.sign("sub", by: "mid")
        try fixtures.concatenate(["sub", "mid", "root"], as: "full.pem")
        #expect(try load("full", key: "sub") == [])
        try fixtures.concatenate(["sub", "mid"], as: "partial.pem")
        #expect(try load("partial", key: "sub") == [])
        // A root followed by itself cross-signed by another root (same subject and key), then that root: a chain.
        try fixtures.make("root2", extensions: CAFixtures.good)
        try (CAFixtures.good + ["authorityKeyIdentifier=keyid"]).joined(separator: "\n")
            .write(toFile: fixtures.path("cross.ext"), atomically: true, encoding: .utf8)
        #expect(try fixtures.openssl(["req", "-new", "-key", "root.key", "-subj", "/CN=root", "-out", "cross.csr", "-config", "/dev/null"]) == 0)
        #expect(try fixtures.openssl([
            "x509", "-req", "-in", "cross.csr", "-CA", "root2.pem", "-CAkey", "root2.key", "-set_serial", "9", "-days", "30",
            "-sha256", "-extfile", "cross.ext", "-out", "cross.pem",
        ]) == 0)
        try fixtures.concatenate(["root", "cross", "root2"], as: "crossed.pem")
        #expect(try load("crossed", key: "root") == [])
        for (name, chain, message) in [
            ("skipped", ["sub", "root"], "certificate 2 (CN = root) is not the issuer of certificate 1 (CN = sub)"),
            ("unrelated", ["sub", "mid", "other"], "certificate 3 (CN = other) is not the issuer of certificate 2 (CN = mid)"),
            ("reversed", ["sub", "root", "mid"], "certificate 2 (CN = root) is not the issuer of certificate 1 (CN = sub)"),
            ("twice", ["root", "root"], "certificate 2 (CN = root) follows a self-signed root"),
        ] {
            try fixtures.concatenate(chain, as: "\(name).pem")
            let found = try #require(problem(name, key: chain[0]), "\(name) was accepted")
            #expect(found.variable == "KAIZEN_CA_CERT" && !found.message.contains("\n"), "\(found.message)")
            #expect(found.message.hasPrefix("KAIZEN_CA_CERT=\(fixtures.path("\(name).pem")): \(message)"), "\(found.message)")
        }
        // A block cut short (or damaged) after the CA: not served as a shorter chain without a word.
        let full = try String(contentsOfFile: fixtures.path("full.pem"), encoding: .utf8)
        try String(full.dropLast(200)).appending("\n-----END CERTIFICATE-----\n")
            .write(toFile: fixtures.path("cut.pem"), atomically: true, encoding: .utf8)
        let cut = try #require(problem("cut", key: "sub"))
        #expect(cut.message.contains("holds 3 certificate blocks, and certificate 3 cannot be read"), "\(cut.message)")
    }

    /// A DER certificate file is that certificate alone: bytes after it (a second certificate run into it, a key)
    /// are refused with one line naming the variable and the fix, not dropped unseen.
    @Test func aDERCertificateWithBytesAfterItIsRefused() throws {
        try fixtures.make("der", extensions: CAFixtures.good)
        #expect(try fixtures.openssl(["x509", "-in", "der.pem", "-outform", "DER", "-out", "der.cer"]) == 0)
        #expect(try fixtures.openssl(["pkey", "-in", "der.key", "-outform", "DER", "-out", "der.key.der"]) == 0)
        let certificate = try #require(FileManager.default.contents(atPath: fixtures.path("der.cer")))
        let key = try #require(FileManager.default.contents(atPath: fixtures.path("der.key.der")))
        try certificate.write(to: URL(fileURLWithPath: fixtures.path("alone.pem")))
        #expect(try load("alone", key: "der") == [])
        for (name, trailing) in [("twice", certificate), ("with-key", key), ("one-byte", Data([0]))] {
            try (certificate + trailing).write(to: URL(fileURLWithPath: fixtures.path("\(name).pem")))
            let found = try #require(problem(name, key: "der"), "\(name) was accepted")
            #expect(found.variable == "KAIZEN_CA_CERT" && !found.message.contains("\n"), "\(found.message)")
            #expect(
                found.message.hasPrefix("KAIZEN_CA_CERT=\(fixtures.path("\(name).pem")) holds \(trailing.count) bytes after its DER certificate: give the CA certificate alone"),
                "\(found.message)")
        }
        // Read anywhere else, a DER certificate with bytes after it is no certificate either.
        #expect(throws: OpenSSLError.self) { try OpenSSLCertificate(der: Array(certificate + Data([0]))) }
    }

    @Test func anEKUWithServerAuthIsFine() throws {
        try fixtures.make("eku-server", extensions: CAFixtures.good + ["extendedKeyUsage=serverAuth,clientAuth"])
        #expect(try load("eku-server") == [])
    }

    @Test func validityIsCheckedAndNearExpiryWarns() throws {
        try fixtures.make("dated", extensions: CAFixtures.good)
        let certificate = try OpenSSLCertificate.chain(pemOrDER: Array(FileManager.default.contents(atPath: fixtures.path("dated.pem"))!))[0]
        #expect(problem("dated", now: certificate.notAfter + 1)?.message.contains("expired at") == true)
        #expect(problem("dated", now: certificate.notBefore - 10)?.message.contains("is not valid until") == true)
        let warnings = try load("dated", now: certificate.notAfter - 3 * 86_400)
        #expect(warnings.count == 1 && warnings[0].contains("in less than 7 days"))
    }

    @Test func theKeyMustMatchAndBeKeptPrivate() throws {
        try fixtures.make("one", extensions: CAFixtures.good)
        try fixtures.make("two", extensions: CAFixtures.good)
        let mismatch = try #require(problem("one", key: "two"))
        #expect(mismatch.variable == "KAIZEN_CA_KEY" && mismatch.message.contains("is not the key of the certificate"))

        chmod(fixtures.path("one.key"), 0o644)
        let open = try #require(problem("one"))
        #expect(open.variable == "KAIZEN_CA_KEY" && open.message.contains("chmod 600"))
        #expect(!open.message.contains("BEGIN"))  // never the key itself
    }

    /// A key in the certificate file (`cat ca.pem ca.key > combo.pem`) is refused, in any order and form, and the
    /// message never holds the key; so is any other block that is not a certificate.
    @Test func theCertificateFileHoldsCertificatesOnly() throws {
        try fixtures.make("combo", extensions: CAFixtures.good)
        let certificate = try String(contentsOfFile: fixtures.path("combo.pem"), encoding: .utf8)
        let key = try String(contentsOfFile: fixtures.path("combo.key"), encoding: .utf8)
        try fixtures.openssl(["pkey", "-in", "combo.key", "-traditional", "-out", "combo-ec.key"])
        let traditional = try String(contentsOfFile: fixtures.path("combo-ec.key"), encoding: .utf8)
        let keyLines = (key + traditional).split(separator: "\n").filter { !$0.hasPrefix("-----") }
        for (name, text) in [("cert-key", certificate + key), ("key-cert", key + certificate), ("cert-ec-key", certificate + traditional)] {
            try text.write(toFile: fixtures.path("\(name).pem"), atomically: true, encoding: .utf8)
            let found = try #require(problem(name, key: "combo"), "\(name) was accepted")
            #expect(found.variable == "KAIZEN_CA_CERT", "\(found.message)")
            #expect(found.message.contains("holds a private key") && found.message.contains("keep the key in KAIZEN_CA_KEY only"), "\(found.message)")
            #expect(!found.message.contains("\n"))
            for line in keyLines { #expect(!found.message.contains(line), "\(name): the key shows") }
        }
        try fixtures.openssl(["ecparam", "-name", "prime256v1", "-out", "params.pem"])
        let parameters = try String(contentsOfFile: fixtures.path("params.pem"), encoding: .utf8)
        try (certificate + parameters).write(toFile: fixtures.path("cert-params.pem"), atomically: true, encoding: .utf8)
        let other = try #require(problem("cert-params", key: "combo"))
        #expect(other.message.contains("holds a block labelled EC PARAMETERS: give KAIZEN_CA_CERT certificates only"), "\(other.message)")
        // Text around the blocks (as `openssl x509 -text` or a bundle's comments leave) is not a block: still fine.
        try ("# the inspection CA\n" + certificate).write(toFile: fixtures.path("commented.pem"), atomically: true, encoding: .utf8)
        #expect(try load("commented", key: "combo") == [])
    }

    @Test func anEncryptedOrMissingKeyIsNamed() throws {
        try fixtures.make("enc", extensions: CAFixtures.good)
        try fixtures.openssl(["pkey", "-in", "enc.key", "-out", "enc-locked.key", "-aes256", "-passout", "pass:secret"])
        chmod(fixtures.path("enc-locked.key"), 0o600)
        #expect(problem("enc", key: "enc-locked")?.message.contains("is encrypted") == true)
        // The traditional form (Proc-Type), and a key exported from PKCS #12, whose block follows `Bag Attributes`.
        try fixtures.openssl(["pkey", "-in", "enc.key", "-out", "enc-old.key", "-traditional", "-aes256", "-passout", "pass:secret"])
        chmod(fixtures.path("enc-old.key"), 0o600)
        #expect(problem("enc", key: "enc-old")?.message.contains("is encrypted") == true)
        let locked = try String(contentsOfFile: fixtures.path("enc-locked.key"), encoding: .utf8)
        try ("Bag Attributes\n    friendlyName: kaizen inspection CA\n    localKeyID: 01 02 03 04 05 06 07 08\n" + locked)
            .write(toFile: fixtures.path("enc-bag.key"), atomically: true, encoding: .utf8)
        chmod(fixtures.path("enc-bag.key"), 0o600)
        #expect(problem("enc", key: "enc-bag")?.message.contains("is encrypted") == true)
        // A key value that names no file is not shown (it may be the key itself, pasted where its path belongs).
        let absent = try #require(problem("enc", key: "absent"))
        #expect(absent.variable == "KAIZEN_CA_KEY" && absent.message.contains("names no readable file"), "\(absent.message)")
        #expect(!absent.message.contains("absent"), "\(absent.message)")
        #expect(problem("absent", key: "enc")?.variable == "KAIZEN_CA_CERT")
    }
}

@Suite struct HostPatternsTests {
    @Test func namesAndSuffixes() throws {
        let patterns = try HostPatterns(parsing: " api.example.com, *.internal.test ,EXAMPLE.org.")
        #expect(patterns.matches("api.example.com"))
        #expect(patterns.matches("API.Example.COM."))
        #expect(patterns.matches("example.org"))
        #expect(!patterns.matches("www.example.com"))
        #expect(patterns.matches("a.internal.test") && patterns.matches("a.b.internal.test"))
        #expect(!patterns.matches("internal.test"))
        #expect(!patterns.matches("xinternal.test"))
        #expect(try HostPatterns(parsing: "").isEmpty)
        #expect(try HostPatterns(parsing: "10.0.0.1").matches("10.0.0.1"))
        // An IPv6 entry matches the address however either side writes it (destinations are reported RFC 5952).
        let v6 = try HostPatterns(parsing: "2001:0DB8:0:0::0001, [::ffff:7f00:1]")
        #expect(v6.matches("2001:db8::1") && v6.matches("2001:0db8::1") && v6.matches("::ffff:127.0.0.1"))
        #expect(!v6.matches("2001:db8::2"))
    }

    @Test(arguments: ["*", "a b", "*.*.example.com", "exa$mple.com", "*."])
    func badEntriesAreRefused(entry: String) {
        #expect(throws: HostPatterns.ParseError.self) { _ = try HostPatterns(parsing: "ok.test," + entry) }
    }
}

@Suite struct InspectionPolicyTests {
    /// An agent that refused the leaf for a name passes its own later connections to it through, for a while; another
    /// agent's are still inspected.
    /// The SNI is the client's to choose: it never takes a tunnel out of inspection on its own.
    @Test func theSNIAloneNeverTakesATunnelOutOfInspection() throws {
        let passthrough = InspectionPolicy(
            inspectHosts: nil, passthroughHosts: try HostPatterns(parsing: "bank.example"), pinnedFor: 3600)
        func decide(_ policy: InspectionPolicy, _ connect: String, _ sni: String?) -> InspectionPolicy.Decision {
            policy.decide(agent: "a", connectHost: connect, isTLS: true, serverName: sni, now: 0)
        }
        #expect(decide(passthrough, "bank.example", "bank.example") == .passthrough(reason: "passthrough host"))
        #expect(decide(passthrough, "bank.example", "other.example") == .passthrough(reason: "passthrough host"))
        // A CONNECT to an address: the passthrough name counts only if it resolves to that address.
        #expect(decide(passthrough, "93.184.215.14", "bank.example") == .passthroughIfNameResolves(name: "bank.example"))
        #expect(passthrough.decide(agent: "a", connectHost: "93.184.215.14", isTLS: true, serverName: "Bank.Example", now: 0,
            sniResolvesToAddress: true) == .passthrough(reason: "passthrough host"))
        #expect(passthrough.decide(agent: "a", connectHost: "93.184.215.14", isTLS: true, serverName: "bank.example", now: 0,
            sniResolvesToAddress: false) == .inspect(leaf: .dns("bank.example"), upstreamName: "bank.example"))
        #expect(decide(passthrough, "93.184.215.14", "other.example") == .inspect(leaf: .dns("other.example"), upstreamName: "other.example"))
        // A CONNECT to another host that claims the passthrough name is inspected.
        #expect(decide(passthrough, "evil.example", "bank.example") == .inspect(leaf: .dns("bank.example"), upstreamName: "bank.example"))
        let only = InspectionPolicy(inspectHosts: try HostPatterns(parsing: "api.example"), passthroughHosts: nil, pinnedFor: 3600)
        #expect(decide(only, "api.example", "api.example") == .inspect(leaf: .dns("api.example"), upstreamName: "api.example"))
        // A CONNECT to an inspected host with another SNI is inspected all the same.
        #expect(decide(only, "api.example", "elsewhere.example") == .inspect(leaf: .dns("elsewhere.example"), upstreamName: "elsewhere.example"))
        #expect(decide(only, "10.0.0.1", "api.example") == .inspect(leaf: .dns("api.example"), upstreamName: "api.example"))
        #expect(decide(only, "other.example", "other.example") == .passthrough(reason: "not in KAIZEN_INSPECT_HOSTS"))
    }

    /// An address in the SNI gets an iPAddress leaf (so IP name constraints apply), as an address with no SNI does.
    @Test func anAddressInTheSNIGetsAnAddressLeaf() {
        let policy = InspectionPolicy(inspectHosts: nil, passthroughHosts: nil, pinnedFor: 3600)
        #expect(policy.decide(agent: "a", connectHost: "10.0.0.1", isTLS: true, serverName: "10.0.0.1", now: 0)
            == .inspect(leaf: .ip("10.0.0.1"), upstreamName: "10.0.0.1"))
        #expect(policy.decide(agent: "a", connectHost: "10.0.0.1", isTLS: true, serverName: nil, now: 0)
            == .inspect(leaf: .ip("10.0.0.1"), upstreamName: "10.0.0.1"))
    }

    @Test func pinningIsRememberedPerAgentAndForAWhile() {
        let policy = InspectionPolicy(inspectHosts: nil, passthroughHosts: nil, pinnedFor: 3600)
        func decision(_ agent: String, at now: Int64) -> InspectionPolicy.Decision {
            policy.decide(agent: agent, connectHost: "api.example.test", isTLS: true, serverName: "API.example.test", now: now)
        }
        #expect(decision("agent-a", at: 1000) == .inspect(leaf: .dns("api.example.test"), upstreamName: "API.example.test"))
        policy.notePinned(agent: "agent-a", "api.example.test", now: 1000)
        #expect(decision("agent-a", at: 1001) == .pinned(reason: "client refused the inspection certificate recently (pinning)"))
        #expect(decision("agent-b", at: 1001) == .inspect(leaf: .dns("api.example.test"), upstreamName: "API.example.test"))
        #expect(decision("agent-a", at: 4600) == .inspect(leaf: .dns("api.example.test"), upstreamName: "API.example.test"))
        // An upstream that requires a client certificate is remembered the same way, with its own reason.
        policy.notePinned(agent: "agent-b", "api.example.test", now: 5000, reason: .upstreamRequiresClientCertificate)
        #expect(decision("agent-b", at: 5001) == .pinned(reason: "the upstream required a client certificate recently (mutual TLS)"))
        #expect(policy.pinReason(agent: "agent-b", "api.example.test", now: 5001) == .upstreamRequiresClientCertificate)
        #expect(decision("agent-b", at: 8600) == .inspect(leaf: .dns("api.example.test"), upstreamName: "API.example.test"))
    }
}

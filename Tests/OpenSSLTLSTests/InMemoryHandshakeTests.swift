import Foundation
import NIOCore
@testable import OpenSSLTLS
import TestSupport
import Testing

/// A CA, a second unrelated CA, and a server certificate for localhost / 127.0.0.1 / ::1 from the first,
/// minted with the openssl command line for each test run.
struct HandshakePKI {
    let directory: URL
    var ca: String { directory.appendingPathComponent("ca.pem").path }
    var otherCA: String { directory.appendingPathComponent("other-ca.pem").path }
    var serverChain: String { directory.appendingPathComponent("server.pem").path }
    var serverKey: String { directory.appendingPathComponent("server.key").path }
    /// The same key and names, but valid only in 2020 / only from 2040.
    var expiredChain: String { directory.appendingPathComponent("expired.pem").path }
    var futureChain: String { directory.appendingPathComponent("future.pem").path }
    /// The server certificate and key in DER.
    var serverDER: String { directory.appendingPathComponent("server.der").path }
    var serverKeyDER: String { directory.appendingPathComponent("server.key.der").path }
    /// A leaf per name for choosing by SNI: `alpha.test` and `beta.test` from the CA, and `gamma.test` from an
    /// intermediate CA (its file holds leaf + intermediate).
    func leafChain(_ name: String) -> String { directory.appendingPathComponent("\(name).pem").path }
    func leafKey(_ name: String) -> String { directory.appendingPathComponent("\(name).key").path }

    /// Minted once per test run; a failure to mint fails the tests that need it, not the whole run.
    static let shared = Result { try mint() }

    static func mint() throws -> HandshakePKI {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kaizen-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        func openssl(_ arguments: [String]) throws {
            let result = try runCommand("/usr/bin/openssl", arguments, directory: directory.path)
            guard result.status == 0 else { throw TestFailure("openssl \(arguments.first ?? ""): \(result.stderr)") }
        }
        for name in ["ca", "other-ca"] {
            try openssl([
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=\(name)", "-keyout", "\(name).key", "-out", "\(name).pem",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            ])
        }
        try openssl([
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr",
        ])
        try "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n"
            .write(to: directory.appendingPathComponent("server.ext"), atomically: true, encoding: .utf8)
        try openssl([
            "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
        ])
        // Certificates with chosen validity periods need `openssl ca`, which takes dates.
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
            [any]
            commonName = supplied
            """.write(to: directory.appendingPathComponent("ca.cnf"), atomically: true, encoding: .utf8)
        try "".write(to: directory.appendingPathComponent("index.txt"), atomically: true, encoding: .utf8)
        try "01\n".write(to: directory.appendingPathComponent("serial"), atomically: true, encoding: .utf8)
        for (name, start, end) in [("expired", "20200101000000Z", "20200201000000Z"), ("future", "20400101000000Z", "20400201000000Z")] {
            try openssl([
                "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in", "server.csr",
                "-out", "\(name).pem", "-startdate", start, "-enddate", end, "-extfile", "server.ext", "-notext",
            ])
        }
        try openssl(["x509", "-in", "server.pem", "-outform", "DER", "-out", "server.der"])
        try openssl(["pkey", "-in", "server.key", "-outform", "DER", "-out", "server.key.der"])
        try openssl([
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=intermediate",
            "-keyout", "intermediate.key", "-out", "intermediate.csr",
        ])
        try "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n"
            .write(to: directory.appendingPathComponent("ca.ext"), atomically: true, encoding: .utf8)
        try openssl([
            "x509", "-req", "-in", "intermediate.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ca.ext", "-out", "intermediate.pem",
        ])
        for (name, issuer) in [("alpha.test", "ca"), ("beta.test", "ca"), ("gamma.test", "intermediate")] {
            try openssl([
                "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=\(name)",
                "-keyout", "\(name).key", "-out", "\(name).csr",
            ])
            try "subjectAltName=DNS:\(name)\nextendedKeyUsage=serverAuth\n"
                .write(to: directory.appendingPathComponent("\(name).ext"), atomically: true, encoding: .utf8)
            try openssl([
                "x509", "-req", "-in", "\(name).csr", "-CA", "\(issuer).pem", "-CAkey", "\(issuer).key",
                "-CAcreateserial", "-days", "2", "-extfile", "\(name).ext", "-out", "\(name).leaf.pem",
            ])
            var chain = try String(contentsOf: directory.appendingPathComponent("\(name).leaf.pem"), encoding: .utf8)
            if issuer != "ca" {
                chain += try String(contentsOf: directory.appendingPathComponent("\(issuer).pem"), encoding: .utf8)
            }
            try chain.write(to: directory.appendingPathComponent("\(name).pem"), atomically: true, encoding: .utf8)
        }
        return HandshakePKI(directory: directory)
    }
}

@Suite struct InMemoryHandshakeTests {
    let pki: HandshakePKI

    init() throws {
        pki = try HandshakePKI.shared.get()
    }

    func server(alpn: [String] = ["h2", "http/1.1"]) throws -> OpenSSLContext {
        var configuration = OpenSSLContext.Configuration(role: .server)
        configuration.certificateChainFile = pki.serverChain
        configuration.privateKeyFile = pki.serverKey
        configuration.alpn = alpn
        return try OpenSSLContext(configuration: configuration)
    }

    func client(
        alpn: [String] = ["h2", "http/1.1"], trust: String? = nil,
        configure: (inout OpenSSLContext.Configuration) -> Void = { _ in }
    ) throws -> OpenSSLContext {
        var configuration = OpenSSLContext.Configuration(role: .client)
        configuration.trustSystemStore = false
        configuration.additionalTrustFile = trust ?? pki.ca
        configuration.alpn = alpn
        configure(&configuration)
        return try OpenSSLContext(configuration: configuration)
    }

    /// Hands what `from` wrote for the network to `to`.
    func pass(_ from: OpenSSLConnection, to: OpenSSLConnection) {
        if let bytes = from.takeForNetwork(allocator: ByteBufferAllocator()) { to.consumeFromNetwork(bytes) }
    }

    /// Decrypts what `connection` has: the text, or how the read ended.
    func readText(_ connection: OpenSSLConnection) -> String {
        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        switch connection.read(into: &buffer) {
        case .read: return String(buffer: buffer)
        case .needMoreData: return "<need more data>"
        case .closed: return "<closed>"
        case .failed(let error): return "<failed: \(error)>"
        }
    }

    /// Moves bytes between the two until both handshakes end (bounded); returns both results. A server that
    /// asks for a certificate gets `choose`'s answer for the SNI (`.failure` refuses).
    func handshake(
        _ client: OpenSSLConnection,
        _ server: OpenSSLConnection,
        choose: (String?) -> Result<OpenSSLCertifiedKey?, OpenSSLError> = { _ in .success(nil) }
    ) -> (OpenSSLConnection.HandshakeResult, OpenSSLConnection.HandshakeResult) {
        var clientResult = client.doHandshake()
        var serverResult = OpenSSLConnection.HandshakeResult.incomplete
        for _ in 0..<20 {
            pass(client, to: server)
            serverResult = server.doHandshake()
            if case .needsCertificate(let name) = serverResult {
                switch choose(name) {
                case .success(let key): server.provideCertificate(key)
                case .failure(let error): server.refuseCertificate(error)
                }
                serverResult = server.doHandshake()
            }
            pass(server, to: client)
            clientResult = client.doHandshake()
            let done: (OpenSSLConnection.HandshakeResult) -> Bool = { $0 != .incomplete }
            if done(clientResult) && done(serverResult) { break }
            if case .failed = clientResult { break }
            if case .failed = serverResult { break }
        }
        pass(client, to: server)
        return (clientResult, serverResult)
    }

    @Test func handshakeNegotiatesTLS13AndALPNAndCarriesDataBothWays() throws {
        let client = try OpenSSLConnection(context: try self.client(), serverName: "localhost")
        let server = try OpenSSLConnection(context: try self.server())
        let (clientResult, serverResult) = handshake(client, server)
        #expect(clientResult == .complete)
        #expect(serverResult == .complete)
        #expect(client.protocolVersion == "TLSv1.3")
        #expect(client.cipherSuite == "TLS_AES_128_GCM_SHA256" && server.cipherSuite == "TLS_AES_128_GCM_SHA256")
        #expect(client.negotiatedProtocol == "h2")
        #expect(server.negotiatedProtocol == "h2")

        #expect(throws: Never.self) { try client.write(ByteBuffer(string: "ping")).get() }
        pass(client, to: server)
        #expect(readText(server) == "ping")
        #expect(throws: Never.self) { try server.write(ByteBuffer(string: "pong")).get() }
        pass(server, to: client)
        #expect(readText(client) == "pong")
        #expect(readText(client) == "<need more data>")

        client.shutdown()
        pass(client, to: server)
        #expect(readText(server) == "<closed>")
    }

    /// Reads fill the room a buffer has before growing it, and `hasBufferedInput` says whether another read
    /// could yield anything: what the handler relies on to skip the read that would only say "need more data".
    @Test func readsUseTheRoomLeftAndBufferedInputIsReportedUntilAllIsRead() throws {
        let client = try OpenSSLConnection(context: try self.client(), serverName: "localhost")
        let server = try OpenSSLConnection(context: try self.server())
        _ = handshake(client, server)
        _ = readText(client)  // takes the session tickets
        #expect(!client.hasBufferedInput)

        // Two records of 3,000 bytes in one delivery: the first read leaves the second in the input.
        #expect(throws: Never.self) { try server.write(ByteBuffer(repeating: UInt8(ascii: "a"), count: 3000)).get() }
        #expect(throws: Never.self) { try server.write(ByteBuffer(repeating: UInt8(ascii: "b"), count: 3000)).get() }
        pass(server, to: client)
        #expect(client.hasBufferedInput)
        var buffer = ByteBufferAllocator().buffer(capacity: 8192)
        let capacity = buffer.capacity
        #expect(client.read(into: &buffer) == .read(3000))
        #expect(client.hasBufferedInput)
        // 5,192 bytes of room left (more than the 4 KiB minimum): the second record goes there, no growth.
        #expect(client.read(into: &buffer) == .read(3000))
        #expect(buffer.capacity == capacity)
        #expect(!client.hasBufferedInput)
        #expect(client.read(into: &buffer) == .needMoreData)
        #expect(buffer.readableBytes == 6000)
        #expect(buffer.getString(at: 2999, length: 2) == "ab")

        // A record bigger than the room left is read in parts; the rest stays buffered inside OpenSSL.
        #expect(throws: Never.self) { try server.write(ByteBuffer(repeating: UInt8(ascii: "c"), count: 10000)).get() }
        pass(server, to: client)
        var small = ByteBufferAllocator().buffer(capacity: 8192)
        guard case .read(let first) = client.read(into: &small, maximum: 16384, minimumRoom: 1) else {
            Issue.record("no data read")
            return
        }
        #expect(first == small.capacity)
        #expect(client.hasBufferedInput)
        var total = first
        for _ in 0..<4 where client.hasBufferedInput {
            if case .read(let count) = client.read(into: &small) { total += count }
        }
        #expect(total == 10000)
        #expect(!client.hasBufferedInput)
    }

    @Test func alpnFollowsTheServerAndIsAbsentWithoutOverlap() throws {
        let onlyHTTP1 = try OpenSSLConnection(context: try server(alpn: ["http/1.1"]))
        let offersBoth = try OpenSSLConnection(context: try client(), serverName: "localhost")
        #expect(handshake(offersBoth, onlyHTTP1).0 == .complete)
        #expect(offersBoth.negotiatedProtocol == "http/1.1")

        let offersNone = try OpenSSLConnection(context: try client(alpn: []), serverName: "localhost")
        let server = try OpenSSLConnection(context: try self.server())
        #expect(handshake(offersNone, server).0 == .complete)
        #expect(offersNone.negotiatedProtocol == nil)

        let offersOther = try OpenSSLConnection(context: try client(alpn: ["spdy/3"]), serverName: "localhost")
        let server2 = try OpenSSLConnection(context: try self.server())
        #expect(handshake(offersOther, server2).0 == .complete)
        #expect(offersOther.negotiatedProtocol == nil)
    }

    @Test func anIPAddressIsCheckedAgainstIPSANs() throws {
        let byIP = try OpenSSLConnection(context: try client(), serverName: "127.0.0.1")
        #expect(handshake(byIP, try OpenSSLConnection(context: try server())).0 == .complete)

        let otherIP = try OpenSSLConnection(context: try client(), serverName: "127.0.0.2")
        guard case .failed(let error) = handshake(otherIP, try OpenSSLConnection(context: try server())).0 else {
            Issue.record("a certificate without 127.0.0.2 was accepted")
            return
        }
        #expect(error.verifyResult == "IP address mismatch", "\(error)")
    }

    @Test func wrongHostAndUnknownCAFailWithTheirReasons() throws {
        let wrongHost = try OpenSSLConnection(context: try client(), serverName: "other.example")
        guard case .failed(let hostError) = handshake(wrongHost, try OpenSSLConnection(context: try server())).0 else {
            Issue.record("a certificate for another host was accepted")
            return
        }
        #expect(hostError.verifyResult == "hostname mismatch", "\(hostError)")

        let unknownCA = try OpenSSLConnection(context: try client(trust: pki.otherCA), serverName: "localhost")
        guard case .failed(let caError) = handshake(unknownCA, try OpenSSLConnection(context: try server())).0 else {
            Issue.record("a certificate from an untrusted CA was accepted")
            return
        }
        #expect(caError.verifyResult == "unable to get local issuer certificate", "\(caError)")
        #expect("\(caError)".contains("certificate verification"))
    }

    @Test(arguments: [("expired", "certificate has expired"), ("future", "certificate is not yet valid")])
    func certificatesOutsideTheirValidityAreRefused(_ name: String, _ reason: String) throws {
        var configuration = OpenSSLContext.Configuration(role: .server)
        configuration.certificateChainFile = name == "expired" ? pki.expiredChain : pki.futureChain
        configuration.privateKeyFile = pki.serverKey
        let server = try OpenSSLConnection(context: try OpenSSLContext(configuration: configuration))
        let client = try OpenSSLConnection(context: try self.client(), serverName: "localhost")
        guard case .failed(let error) = handshake(client, server).0 else {
            Issue.record("a certificate outside its validity was accepted")
            return
        }
        #expect(error.verifyResult == reason, "\(error)")
    }

    @Test func aServerWithoutAKeyRefusesToBuild() {
        var configuration = OpenSSLContext.Configuration(role: .server)
        configuration.certificateChainFile = pki.serverChain
        configuration.privateKeyFile = pki.directory.appendingPathComponent("other-ca.key").path
        #expect {
            _ = try OpenSSLContext(configuration: configuration)
        } throws: { error in
            "\(error)".contains("matching the private key") || "\(error)".contains("key values mismatch")
        }
    }

    @Test func manyHandshakesReuseOneContext() throws {
        let clientContext = try client()
        let serverContext = try server()
        for _ in 0..<100 {
            let client = try OpenSSLConnection(context: clientContext, serverName: "localhost")
            let server = try OpenSSLConnection(context: serverContext)
            let (clientResult, serverResult) = handshake(client, server)
            #expect(clientResult == .complete && serverResult == .complete)
        }
    }

    // MARK: certificates in DER and chosen per connection

    @Test func derFilesWorkLikePEM() throws {
        var configuration = OpenSSLContext.Configuration(role: .server)
        configuration.certificateChainFile = pki.serverDER
        configuration.privateKeyFile = pki.serverKeyDER
        let serverContext = try OpenSSLContext(configuration: configuration)
        let client = try OpenSSLConnection(context: try client(), serverName: "localhost")
        let server = try OpenSSLConnection(context: serverContext)
        let (clientResult, serverResult) = handshake(client, server)
        #expect(clientResult == .complete && serverResult == .complete)
        let der = try OpenSSLCertificate.chain(pemOrDER: Array(FileManager.default.contents(atPath: pki.serverDER)!))
        let pem = try OpenSSLCertificate.chain(pemOrDER: Array(FileManager.default.contents(atPath: pki.serverChain)!))
        #expect(der == pem)
    }

    @Test func aKeyThatIsNotTheLeafsIsRefused() throws {
        let chain = try OpenSSLCertificate.chain(pemOrDER: Array(FileManager.default.contents(atPath: pki.leafChain("alpha.test"))!))
        let key = try OpenSSLPrivateKey(pemOrDER: Array(FileManager.default.contents(atPath: pki.leafKey("beta.test"))!))
        #expect(throws: OpenSSLError.self) { _ = try OpenSSLCertifiedKey(chain: chain, key: key) }
        #expect("\(key)" == "OpenSSLPrivateKey(<redacted>)")
    }

    func providerServer(withDefault: Bool) throws -> OpenSSLContext {
        var configuration = OpenSSLContext.Configuration(role: .server)
        if withDefault {
            configuration.certificateChainFile = pki.serverChain
            configuration.privateKeyFile = pki.serverKey
        }
        // Connections report `.needsCertificate`; the test's `choose` answers in place of this provider.
        configuration.certificateProvider = { _, eventLoop in eventLoop.makeSucceededFuture(nil) }
        return try OpenSSLContext(configuration: configuration)
    }

    func certifiedKey(_ name: String) throws -> OpenSSLCertifiedKey {
        try OpenSSLCertifiedKey(chainFile: pki.leafChain(name), keyFile: pki.leafKey(name))
    }

    @Test(arguments: ["alpha.test", "beta.test", "gamma.test"])
    func eachConnectionGetsTheCertificateForItsSNI(name: String) throws {
        let keys = ["alpha.test": try certifiedKey("alpha.test"), "beta.test": try certifiedKey("beta.test"),
                    "gamma.test": try certifiedKey("gamma.test")]
        let serverContext = try providerServer(withDefault: false)
        // The client trusts only the root: gamma.test verifies only if its intermediate is sent too.
        let client = try OpenSSLConnection(context: try client(), serverName: name)
        let server = try OpenSSLConnection(context: serverContext)
        var asked: [String?] = []
        let (clientResult, serverResult) = handshake(client, server) { sni in
            asked.append(sni)
            return .success(keys[sni ?? ""])
        }
        #expect(asked == [name])
        #expect(clientResult == .complete, "\(clientResult)")
        #expect(serverResult == .complete, "\(serverResult)")
        #expect(server.requestedServerName == name)
    }

    @Test func anUnknownNameWithoutADefaultFailsBothSidesNamingIt() throws {
        let client = try OpenSSLConnection(context: try client(), serverName: "unknown.test")
        let server = try OpenSSLConnection(context: try providerServer(withDefault: false))
        let (clientResult, serverResult) = handshake(client, server) { _ in .success(nil) }
        guard case .failed(let serverError) = serverResult, case .failed = clientResult else {
            Issue.record("expected both to fail: \(clientResult) \(serverResult)")
            return
        }
        #expect("\(serverError)".contains("no certificate for server name unknown.test"))
    }

    @Test func anUnknownNameFallsBackToTheDefault() throws {
        let client = try OpenSSLConnection(context: try client(), serverName: "localhost")
        let server = try OpenSSLConnection(context: try providerServer(withDefault: true))
        let (clientResult, serverResult) = handshake(client, server) { _ in .success(nil) }
        #expect(clientResult == .complete && serverResult == .complete)
    }

    @Test func aRefusalFailsTheHandshakeWithTheProvidersReason() throws {
        let client = try OpenSSLConnection(context: try client(), serverName: "alpha.test")
        let server = try OpenSSLConnection(context: try providerServer(withDefault: true))
        let refusal = OpenSSLError(operation: "minting", entries: ["CA unavailable"])
        let (clientResult, serverResult) = handshake(client, server) { _ in .failure(refusal) }
        #expect(serverResult == .failed(refusal))
        guard case .failed = clientResult else {
            Issue.record("the client should get an alert, got \(clientResult)")
            return
        }
    }

    @Test func noSNIAsksWithNil() throws {
        // An IP address is never sent as SNI.
        let client = try OpenSSLConnection(context: try client(), serverName: "127.0.0.1")
        let server = try OpenSSLConnection(context: try providerServer(withDefault: false))
        var asked: [String?] = ["sentinel"]
        let serverKey = try OpenSSLCertifiedKey(chainFile: pki.serverChain, keyFile: pki.serverKey)
        let (clientResult, serverResult) = handshake(client, server) { sni in
            asked = [sni]
            return .success(serverKey)
        }
        #expect(asked == [nil])
        #expect(clientResult == .complete && serverResult == .complete)
    }

    // MARK: the verification cache

    /// A handshake of a new connection of `clientContext` for `name` with a server presenting `chain`; the client's
    /// result.
    func connect(
        _ clientContext: OpenSSLContext, to name: String, chain: String? = nil, key: String? = nil
    ) throws -> OpenSSLConnection.HandshakeResult {
        var configuration = OpenSSLContext.Configuration(role: .server)
        configuration.certificateChainFile = chain ?? pki.serverChain
        configuration.privateKeyFile = key ?? pki.serverKey
        let client = try OpenSSLConnection(context: clientContext, serverName: name)
        return handshake(client, try OpenSSLConnection(context: try OpenSSLContext(configuration: configuration))).0
    }

    func verifyResult(_ result: OpenSSLConnection.HandshakeResult) -> String? {
        guard case .failed(let error) = result else { return nil }
        return error.verifyResult
    }

    @Test func aVerifiedChainIsTakenFromTheCacheButItsNameIsCheckedEachTime() throws {
        let clientContext = try client()
        for expected in 0..<3 {
            #expect(try connect(clientContext, to: "localhost") == .complete)
            #expect(clientContext.chainsVerifiedFromCache == expected)
        }
        // The same chain for names it does not carry: verified again, and refused with OpenSSL's reason.
        #expect(verifyResult(try connect(clientContext, to: "other.example")) == "hostname mismatch")
        #expect(verifyResult(try connect(clientContext, to: "127.0.0.2")) == "IP address mismatch")
        #expect(clientContext.chainsVerifiedFromCache == 2)
        // For another name it carries (here an IP SAN): from the cache.
        #expect(try connect(clientContext, to: "127.0.0.1") == .complete)
        #expect(clientContext.chainsVerifiedFromCache == 3)
        // A chain of two (leaf and intermediate) likewise.
        let gamma = (pki.leafChain("gamma.test"), pki.leafKey("gamma.test"))
        #expect(try connect(clientContext, to: "gamma.test", chain: gamma.0, key: gamma.1) == .complete)
        #expect(try connect(clientContext, to: "gamma.test", chain: gamma.0, key: gamma.1) == .complete)
        #expect(clientContext.chainsVerifiedFromCache == 4)
        #expect(verifyResult(try connect(clientContext, to: "alpha.test", chain: gamma.0, key: gamma.1))
            == "hostname mismatch")
        #expect(clientContext.chainsVerifiedFromCache == 4)
        // The cached chain's leaf without its intermediate is another chain: verified, and refused.
        let pem = try String(contentsOfFile: gamma.0, encoding: .utf8)
        let end = try #require(pem.range(of: "-----END CERTIFICATE-----\n"))
        let leafOnly = pki.directory.appendingPathComponent("gamma-leaf-only-\(UUID().uuidString).pem").path
        try String(pem[..<end.upperBound]).write(toFile: leafOnly, atomically: true, encoding: .utf8)
        #expect(verifyResult(try connect(clientContext, to: "gamma.test", chain: leafOnly, key: gamma.1))
            == "unable to get local issuer certificate")
        // So is the leaf sent with another certificate (the root) in place of its intermediate.
        let otherSecond = pki.directory.appendingPathComponent("gamma-with-root-\(UUID().uuidString).pem").path
        try (String(pem[..<end.upperBound]) + String(contentsOfFile: pki.ca, encoding: .utf8))
            .write(toFile: otherSecond, atomically: true, encoding: .utf8)
        #expect(verifyResult(try connect(clientContext, to: "gamma.test", chain: otherSecond, key: gamma.1))
            == "unable to get local issuer certificate")
        #expect(clientContext.chainsVerifiedFromCache == 4)
    }

    @Test func anotherCertificateForACachedNameIsVerifiedAgain() throws {
        let clientContext = try client()
        #expect(try connect(clientContext, to: "localhost") == .complete)
        // The same name and key, in a certificate that has expired: not the cached chain.
        #expect(verifyResult(try connect(clientContext, to: "localhost", chain: pki.expiredChain))
            == "certificate has expired")
        #expect(clientContext.chainsVerifiedFromCache == 0)
    }

    @Test func aRefusedChainIsVerifiedAgainEachTime() throws {
        let clientContext = try client(trust: pki.otherCA)
        for _ in 0..<2 {
            #expect(verifyResult(try connect(clientContext, to: "localhost")) == "unable to get local issuer certificate")
        }
        #expect(clientContext.chainsVerifiedFromCache == 0)
    }

    @Test func withoutALifetimeEveryChainIsVerified() throws {
        let clientContext = try client { $0.verificationCacheLifetime = 0 }
        for _ in 0..<2 { #expect(try connect(clientContext, to: "localhost") == .complete) }
        #expect(clientContext.chainsVerifiedFromCache == 0)
    }

    // MARK: session resumption

    /// A new connection of `clientContext` with `key`: the handshake, then data from the server (the client takes
    /// the server's tickets in with it). Whether it resumed a session; nil when the handshake failed.
    func resumes(
        _ clientContext: OpenSSLContext, _ serverContext: OpenSSLContext, name: String = "localhost", key: String?
    ) throws -> Bool? {
        let client = try OpenSSLConnection(context: clientContext, serverName: name, sessionKey: key)
        let server = try OpenSSLConnection(context: serverContext)
        guard handshake(client, server).0 == .complete else { return nil }
        try server.write(ByteBuffer(string: "x")).get()
        pass(server, to: client)
        #expect(readText(client) == "x")
        return client.sessionReused
    }

    @Test func aSessionIsResumedByTheNextConnectionWithTheSameKey() throws {
        let clientContext = try client()
        let serverContext = try server()
        #expect(try resumes(clientContext, serverContext, key: "a") == false)
        #expect(try resumes(clientContext, serverContext, key: "a") == true)
        // The resumed connection brought fresh tickets: the next one resumes too.
        #expect(try resumes(clientContext, serverContext, key: "a") == true)
        // Another key (another destination, name or ALPN offer), or none: a full handshake.
        #expect(try resumes(clientContext, serverContext, key: "b") == false)
        #expect(try resumes(clientContext, serverContext, key: nil) == false)
        #expect(clientContext.sessionsResumed == 2)
    }

    @Test func aSessionKeptUnderAKeyIsNotOfferedForAnotherName() throws {
        let clientContext = try client()
        let serverContext = try server()
        #expect(try resumes(clientContext, serverContext, key: "a") == false)
        // The same key for another name: the session was verified for localhost only, so it is not offered (OpenSSL
        // would offer it, and this server would accept it); the full handshake verifies the name, and refuses it.
        #expect(try resumes(clientContext, serverContext, name: "other.example", key: "a") == nil)
        #expect(clientContext.sessionsResumed == 0)
    }

    @Test func withoutASessionLifetimeNothingIsResumed() throws {
        let clientContext = try client { $0.sessionLifetime = 0 }
        let serverContext = try server()
        for _ in 0..<2 { #expect(try resumes(clientContext, serverContext, key: "a") == false) }
    }
}

/// Chains of other key types than the shared PKI's P-256, minted with the openssl command line once per run: a CA
/// and a `localhost` leaf of each kind, and an RSA CA that signs a P-256 leaf.
struct KeyTypePKI {
    static let kinds: [(name: String, newkey: [String])] = [
        ("rsa", ["-newkey", "rsa:2048"]),
        ("rsa-pss", ["-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048"]),
        ("ed25519", ["-newkey", "ed25519"]),
        ("p384", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"]),
        ("p256-under-rsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    ]
    let directory: URL
    func ca(_ kind: String) -> String { directory.appendingPathComponent("\(kind == "p256-under-rsa" ? "rsa" : kind)-ca.pem").path }
    func chain(_ kind: String) -> String { directory.appendingPathComponent("\(kind).pem").path }
    func key(_ kind: String) -> String { directory.appendingPathComponent("\(kind).key").path }

    static let shared = Result { try mint() }

    static func mint() throws -> KeyTypePKI {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kaizen-keys-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        func openssl(_ arguments: [String]) throws {
            let result = try runCommand("/usr/bin/openssl", arguments, directory: directory.path)
            guard result.status == 0 else { throw TestFailure("openssl \(arguments.first ?? ""): \(result.stderr)") }
        }
        try "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n"
            .write(to: directory.appendingPathComponent("leaf.ext"), atomically: true, encoding: .utf8)
        for (kind, newkey) in kinds {
            let issuer = kind == "p256-under-rsa" ? "rsa" : kind
            if kind != "p256-under-rsa" {
                try openssl(["req", "-x509"] + newkey + [
                    "-nodes", "-days", "2", "-subj", "/CN=\(kind) CA", "-keyout", "\(kind)-ca.key", "-out", "\(kind)-ca.pem",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
                ])
            }
            try openssl(["req"] + newkey + ["-nodes", "-subj", "/CN=localhost", "-keyout", "\(kind).key", "-out", "\(kind).csr"])
            try openssl([
                "x509", "-req", "-in", "\(kind).csr", "-CA", "\(issuer)-ca.pem", "-CAkey", "\(issuer)-ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext", "-out", "\(kind).pem",
            ])
        }
        return KeyTypePKI(directory: directory)
    }
}

/// The client library context (`kaizen_client_library_context`): only the decoders that read a public key. What a
/// client verifies, and how it fails, must not depend on it.
extension InMemoryHandshakeTests {
    @Test func clientContextsAreMadeInTheClientLibraryContextWithOnlyPublicKeyDecoders() throws {
        #expect(try client().inClientLibraryContext)
        #expect(try !client { $0.inClientLibraryContext = false }.inClientLibraryContext)
        #expect(try !server().inClientLibraryContext)
        let (kept, all) = OpenSSLLibrary.clientLibraryContextDecoders
        #expect(kept > 0 && kept < all, "kept \(kept) of \(all)")
    }

    @Test(arguments: KeyTypePKI.kinds.map { $0.name }, [true, false])
    func serversOfEveryKeyTypeAreVerifiedAsInTheDefaultContext(kind: String, lean: Bool) throws {
        let keys = try KeyTypePKI.shared.get()
        let trusted = try client(trust: keys.ca(kind)) { $0.inClientLibraryContext = lean }
        #expect(try connect(trusted, to: "localhost", chain: keys.chain(kind), key: keys.key(kind)) == .complete)
        // The same chain against another root, and for another name: refused with OpenSSL's reasons.
        let untrusted = try client(trust: pki.ca) { $0.inClientLibraryContext = lean }
        let refused = try connect(untrusted, to: "localhost", chain: keys.chain(kind), key: keys.key(kind))
        #expect(verifyResult(refused) == "unable to get local issuer certificate")
        let wrongName = try connect(trusted, to: "other.example", chain: keys.chain(kind), key: keys.key(kind))
        #expect(verifyResult(wrongName) == "hostname mismatch")
    }

    @Test func aTrustFileWithAPrivateKeyInItStillLoads() throws {
        let keys = try KeyTypePKI.shared.get()
        let mixed = keys.directory.appendingPathComponent("ca-and-key.pem")
        let text = try String(contentsOfFile: keys.ca("rsa"), encoding: .utf8)
            + String(contentsOfFile: keys.key("rsa"), encoding: .utf8)
        try text.write(to: mixed, atomically: true, encoding: .utf8)
        let trusted = try client(trust: mixed.path)
        #expect(trusted.inClientLibraryContext)
        #expect(try connect(trusted, to: "localhost", chain: keys.chain("rsa"), key: keys.key("rsa")) == .complete)
    }
}

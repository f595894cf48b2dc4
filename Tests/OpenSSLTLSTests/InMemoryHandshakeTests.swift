import Foundation
import OpenSSLTLS
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

    /// Minted once per test run; a failure to mint fails the tests that need it, not the whole run.
    static let shared = Result { try mint() }

    static func mint() throws -> HandshakePKI {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kaizen-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        func openssl(_ arguments: [String]) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            process.arguments = arguments
            process.currentDirectoryURL = directory
            process.standardError = FileHandle.nullDevice
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw CocoaError(.fileWriteUnknown) }
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

    func client(alpn: [String] = ["h2", "http/1.1"], trust: String? = nil) throws -> OpenSSLContext {
        var configuration = OpenSSLContext.Configuration(role: .client)
        configuration.trustSystemStore = false
        configuration.additionalTrustFile = trust ?? pki.ca
        configuration.alpn = alpn
        return try OpenSSLContext(configuration: configuration)
    }

    /// Moves bytes between the two until both handshakes end (bounded); returns both results.
    func handshake(_ client: OpenSSLConnection, _ server: OpenSSLConnection)
        -> (OpenSSLConnection.HandshakeResult, OpenSSLConnection.HandshakeResult)
    {
        var clientResult = client.doHandshake()
        var serverResult = OpenSSLConnection.HandshakeResult.incomplete
        for _ in 0..<20 {
            server.consumeFromNetwork(client.takeForNetwork())
            serverResult = server.doHandshake()
            client.consumeFromNetwork(server.takeForNetwork())
            clientResult = client.doHandshake()
            let done: (OpenSSLConnection.HandshakeResult) -> Bool = { $0 != .incomplete }
            if done(clientResult) && done(serverResult) { break }
            if case .failed = clientResult { break }
            if case .failed = serverResult { break }
        }
        server.consumeFromNetwork(client.takeForNetwork())
        return (clientResult, serverResult)
    }

    @Test func handshakeNegotiatesTLS13AndALPNAndCarriesDataBothWays() throws {
        let client = try OpenSSLConnection(context: try self.client(), serverName: "localhost")
        let server = try OpenSSLConnection(context: try self.server())
        let (clientResult, serverResult) = handshake(client, server)
        #expect(clientResult == .complete)
        #expect(serverResult == .complete)
        #expect(client.protocolVersion == "TLSv1.3")
        #expect(client.negotiatedProtocol == "h2")
        #expect(server.negotiatedProtocol == "h2")

        #expect(throws: Never.self) { try client.write(Array("ping".utf8)).get() }
        server.consumeFromNetwork(client.takeForNetwork())
        #expect(server.read() == .data(Array("ping".utf8)))
        #expect(throws: Never.self) { try server.write(Array("pong".utf8)).get() }
        client.consumeFromNetwork(server.takeForNetwork())
        #expect(client.read() == .data(Array("pong".utf8)))
        #expect(client.read() == .needMoreData)

        client.shutdown()
        server.consumeFromNetwork(client.takeForNetwork())
        #expect(server.read() == .closed)
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
}

import Foundation
@testable import OpenSSLTLS
import TestSupport
import Testing

@Suite struct CertificateAuthorityTests {
    let pki: HandshakePKI

    init() throws {
        pki = try HandshakePKI.shared.get()
    }

    func bytes(_ path: String) throws -> [UInt8] {
        Array(try #require(FileManager.default.contents(atPath: path)))
    }

    func authority() throws -> OpenSSLCertificateAuthority {
        try OpenSSLCertificateAuthority(
            chain: try OpenSSLCertificate.chain(pemOrDER: try bytes(pki.ca)),
            key: try OpenSSLPrivateKey(pemOrDER: try bytes(pki.directory.appendingPathComponent("ca.key").path))
        )
    }

    var now: Int64 { Int64(Date().timeIntervalSince1970) }

    @Test func aLeafHasWhatStrictClientsRequire() throws {
        let ca = try authority()
        let leaf = try ca.mintLeaf(for: .dns("api.example.test"), key: try .generateP256ForLeaves(), now: now)
        let certificate = leaf.leaf
        #expect(certificate.subjectDescription == "CN = api.example.test")
        #expect(certificate.issuerDER == ca.certificate.subjectDER)
        let san = certificate.subjectAlternativeNames
        #expect(san.names == ["DNS:api.example.test"] && !san.critical)
        #expect(certificate.basicConstraints == .init(isCA: false, isCritical: true))
        #expect(certificate.keyUsageIsCritical == true)
        #expect(certificate.extendedKeyUsageIsServerAuthOnly)
        #expect(certificate.authorityKeyIdentifier == ca.certificate.subjectKeyIdentifier)
        #expect(certificate.authorityKeyIdentifier != nil)
        #expect(!certificate.hasSubjectKeyIdentifierExtension)
        #expect(certificate.signatureAlgorithm == "ecdsa-with-SHA256")
        #expect(certificate.serialNumber.count >= 15 && certificate.serialNumber.count <= 16)
        #expect(certificate.notBefore <= now - 3599 && certificate.notBefore >= now - 3700)
        #expect(certificate.notAfter == min(certificate.notBefore + 30 * 86_400, ca.certificate.notAfter))
        #expect(leaf.chain.count == 2 && leaf.chain[1] == ca.certificate)
    }

    /// The leaf key is held as a legacy EC_KEY (cheaper to put in a certificate); its SubjectPublicKeyInfo must still be
    /// what a provider key's is: id-ecPublicKey with the named curve prime256v1 (strict clients refuse explicit curve
    /// parameters) and an uncompressed point, and decoding the leaf afresh must give the same certificate.
    @Test(arguments: [true, false]) func aLeafKeyIsANamedCurveP256Key(forLeaves: Bool) throws {
        let key = forLeaves ? try OpenSSLPrivateKey.generateP256ForLeaves() : try OpenSSLPrivateKey.generateP256()
        let leaf = try authority().mintLeaf(for: .dns("api.example.test"), key: key, now: now).leaf
        let der = leaf.derBytes
        let spkiStart: [UInt8] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01,  // id-ecPublicKey
            0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07,  // prime256v1
            0x03, 0x42, 0x00, 0x04,  // BIT STRING, uncompressed point
        ]
        let found = (0...(der.count - spkiStart.count)).contains { Array(der[$0..<$0 + spkiStart.count]) == spkiStart }
        #expect(found)
        let decoded = try #require(try OpenSSLCertificate.chain(pemOrDER: der).first)
        #expect(decoded.derBytes == der)
        #expect(key.algorithm == "EC")
    }

    @Test func serialsDiffer() throws {
        let ca = try authority()
        let key = try OpenSSLPrivateKey.generateP256ForLeaves()
        let serials = try (0..<20).map { _ in try ca.mintLeaf(for: .dns("a.test"), key: key, now: now).leaf.serialNumber }
        #expect(Set(serials).count == 20)
    }

    @Test func aLongNameGetsAnEmptySubjectAndACriticalSAN() throws {
        let name = String(repeating: "a", count: 60) + ".example.test"
        let leaf = try authority().mintLeaf(for: .dns(name), key: try .generateP256ForLeaves(), now: now).leaf
        #expect(leaf.subjectDescription == "")
        #expect(leaf.subjectAlternativeNames.names == ["DNS:" + name])
        #expect(leaf.subjectAlternativeNames.critical)
    }

    @Test func anIPAddressGetsAnIPSAN() throws {
        let leaf = try authority().mintLeaf(for: .ip("127.0.0.1"), key: try .generateP256ForLeaves(), now: now).leaf
        #expect(leaf.subjectAlternativeNames.names == ["IP:127.0.0.1"])
        #expect(leaf.subjectAlternativeNames.critical)
        let v6 = try authority().mintLeaf(for: .ip("::1"), key: try .generateP256ForLeaves(), now: now).leaf
        #expect(v6.subjectAlternativeNames.names == ["IP:::1"])
    }

    @Test(arguments: ["", "bad,name", "a..b", "-a.test", "a b.test", "DNS:x", String(repeating: "a", count: 64) + ".test"])
    func namesACertificateCannotCarryAreRefused(name: String) throws {
        #expect(throws: OpenSSLCertificateAuthority.MintingError.invalidName(name)) {
            _ = try authority().mintLeaf(for: .dns(name), key: try .generateP256ForLeaves(), now: now)
        }
    }

    @Test func theLeafExpiresWithTheCA() throws {
        let ca = try authority()
        let leaf = try ca.mintLeaf(for: .dns("a.test"), key: try .generateP256ForLeaves(), now: now, lifetime: 400 * 86_400).leaf
        #expect(leaf.notAfter == ca.certificate.notAfter)
    }

    @Test func opensslVerifiesTheLeafStrictly() throws {
        let leaf = try authority().mintLeaf(for: .dns("strict.example.test"), key: try .generateP256ForLeaves(), now: now)
        let path = pki.directory.appendingPathComponent("minted-\(UUID().uuidString).pem").path
        try Data(try leaf.leaf.pemBytes()).write(to: URL(fileURLWithPath: path))
        let result = try runCommand(
            "/usr/bin/openssl",
            ["verify", "-x509_strict", "-purpose", "sslserver", "-verify_hostname", "strict.example.test", "-CAfile", pki.ca, path])
        let text = result.stdout + result.stderr
        #expect(result.status == 0, "\(text)")
        #expect(text.contains(": OK"))
    }

    @Test func aClientVerifiesAMintedLeafInAHandshake() throws {
        var client = OpenSSLContext.Configuration(role: .client)
        client.trustSystemStore = false
        client.additionalTrustFile = pki.ca
        let clientConnection = try OpenSSLConnection(context: try OpenSSLContext(configuration: client), serverName: "minted.test")
        let leaf = try authority().mintLeaf(for: .dns("minted.test"), key: try .generateP256ForLeaves(), now: now)
        var server = OpenSSLContext.Configuration(role: .server)
        server.certifiedKey = leaf
        let serverConnection = try OpenSSLConnection(context: try OpenSSLContext(configuration: server))
        let (clientResult, serverResult) = try InMemoryHandshakeTests().handshake(clientConnection, serverConnection)
        #expect(clientResult == .complete && serverResult == .complete)
    }

    @Test func aNameOutsideTheCAsNameConstraintsIsNotMinted() throws {
        let directory = pki.directory.appendingPathComponent("nc-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let made = try runCommand("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=constrained", "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            "-addext", "nameConstraints=critical,permitted;DNS:.corp.test",
        ], directory: directory.path)
        #expect(made.status == 0, "\(made.stderr)")
        let ca = try OpenSSLCertificateAuthority(
            chain: try OpenSSLCertificate.chain(pemOrDER: try bytes(directory.appendingPathComponent("ca.pem").path)),
            key: try OpenSSLPrivateKey(pemOrDER: try bytes(directory.appendingPathComponent("ca.key").path))
        )
        #expect(ca.certificate.hasNameConstraints)
        _ = try ca.mintLeaf(for: .dns("api.corp.test"), key: try .generateP256ForLeaves(), now: now)
        #expect(throws: OpenSSLCertificateAuthority.MintingError.outsideNameConstraints("api.other.test")) {
            _ = try ca.mintLeaf(for: .dns("api.other.test"), key: try .generateP256ForLeaves(), now: now)
        }
    }

    @Test func aSelfSignedCAPassesItsOwnShape() throws {
        let key = try OpenSSLPrivateKey.generateP256()
        let ca = try OpenSSLCertificateAuthority.selfSignedCA(
            commonName: "Kaizen egress CA", organization: "Example", key: key, now: now, lifetime: 365 * 86_400)
        #expect(ca.basicConstraints == .init(isCA: true, isCritical: true))
        #expect(ca.keyUsageAllowsCertificateSigning && ca.hasKeyUsage)
        #expect(ca.subjectKeyIdentifier?.count == 20)
        #expect(ca.subjectDER == ca.issuerDER)
        #expect(ca.subjectDescription == "O = Example, CN = Kaizen egress CA")
        let authority = try OpenSSLCertificateAuthority(chain: [ca], key: key)
        let leaf = try authority.mintLeaf(for: .dns("x.test"), key: try .generateP256ForLeaves(), now: now)
        #expect(leaf.leaf.authorityKeyIdentifier == ca.subjectKeyIdentifier)
        let pem = String(decoding: try key.pemBytes(), as: UTF8.self)
        #expect(pem.hasPrefix("-----BEGIN PRIVATE KEY-----"))
        #expect(try OpenSSLPrivateKey(pemOrDER: Array(pem.utf8)).algorithm == "EC")
    }

    @Test func aKeyFromAnotherCAIsRefused() throws {
        #expect(throws: OpenSSLError.self) {
            _ = try OpenSSLCertificateAuthority(
                chain: try OpenSSLCertificate.chain(pemOrDER: try bytes(pki.ca)),
                key: try OpenSSLPrivateKey(pemOrDER: try bytes(pki.directory.appendingPathComponent("other-ca.key").path))
            )
        }
    }
}

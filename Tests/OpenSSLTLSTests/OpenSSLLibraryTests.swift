import Foundation
import OpenSSLTLS
import TestSupport
import Testing

@Suite struct OpenSSLLibraryTests {
    @Test func linksTheSystemOpenSSL3() {
        #expect(OpenSSLLibrary.version.hasPrefix("OpenSSL 3."))
        #expect(OpenSSLLibrary.versionNumber >= 0x3000_0000)
    }

    @Test func garbageGivesOpenSSLsOwnReason() {
        do {
            _ = try OpenSSLCertificate.chain(pem: Array("not a certificate".utf8))
            Issue.record("garbage was accepted")
        } catch {
            #expect(error.operation == "reading a PEM certificate")
            #expect(error.entries.contains { $0.contains("no start line") }, "\(error)")
        }
    }

    @Test func aRealCertificateParses() throws {
        // A certificate made by the openssl command line, not by this code.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kaizen-ossl-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let made = try runCommand("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", "/CN=test", "-keyout", directory.appendingPathComponent("k.pem").path,
            "-out", directory.appendingPathComponent("c.pem").path,
        ])
        #expect(made.status == 0, "\(made.stderr)")
        let pem = try String(contentsOf: directory.appendingPathComponent("c.pem"), encoding: .utf8)
        #expect(try OpenSSLCertificate.chain(pem: Array(pem.utf8)).first?.subjectDescription == "CN = test")
        // A truncated copy fails.
        #expect(throws: OpenSSLError.self) { _ = try OpenSSLCertificate.chain(pem: Array(pem.prefix(200).utf8)) }
    }
}

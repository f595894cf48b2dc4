import Foundation
import TestSupport

/// A CA and a server certificate for `localhost`, 127.0.0.1 and ::1, minted with the openssl command line
/// into a fresh temporary directory; every test run has its own.
struct TestPKI: Sendable {
    let directory: String
    var caCertificate: String { directory + "/ca.pem" }
    var serverCertificate: String { directory + "/server.pem" }
    var serverKey: String { directory + "/server.key" }

    static func mint() throws -> TestPKI {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("kaizen-pki-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let openssl = Paths.which("openssl")
        func run(_ arguments: [String]) throws {
            let result = try runCommand(openssl, arguments, timeout: 30)
            guard result.status == 0 else { throw TestFailure("openssl \(arguments.first ?? ""): \(result.stderr)") }
        }
        try run([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", directory + "/ca.key", "-out", directory + "/ca.pem", "-days", "2",
            "-subj", "/CN=Kaizen Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])
        try run([
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", directory + "/server.key", "-out", directory + "/server.csr", "-subj", "/CN=localhost",
        ])
        let extensions = directory + "/server.ext"
        try "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            .write(toFile: extensions, atomically: true, encoding: .utf8)
        try run([
            "x509", "-req", "-in", directory + "/server.csr", "-CA", directory + "/ca.pem",
            "-CAkey", directory + "/ca.key", "-CAcreateserial", "-out", directory + "/server.pem", "-days", "2",
            "-extfile", extensions,
        ])
        return TestPKI(directory: directory)
    }
}

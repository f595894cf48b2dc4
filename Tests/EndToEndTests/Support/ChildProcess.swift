import Foundation
import TestSupport

extension ChildProcess {
    /// `python3 origin.py --mode …`, waiting for its "PORT n" line.
    static func origin(
        mode: String, host: String = "127.0.0.1", cert: String? = nil, key: String? = nil, extra: [String] = []
    ) throws -> (ChildProcess, Int) {
        var arguments = [Paths.originScript, "--mode", mode, "--host", host]
        if let cert, let key { arguments += ["--cert", cert, "--key", key] }
        arguments += extra
        let child = try ChildProcess(Paths.which("python3"), arguments)
        let line = try child.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }
        guard let port = Int(line.dropFirst(5)) else { throw TestFailure("origin printed \(line)") }
        return (child, port)
    }

    /// An HTTPS origin (`pki`'s certificate for localhost) that, from a `GET /swap-cert` on, presents a self-signed
    /// one for localhost that nothing trusts, and never issues session tickets (each connection's certificate is
    /// checked, not stood for by an earlier one).
    static func swappingOrigin(_ pki: TestPKI) throws -> (ChildProcess, Int) {
        let made = try runCommand(
            Paths.which("openssl"),
            ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "other.key",
             "-out", "other.pem", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
            directory: pki.directory, timeout: 30)
        guard made.status == 0 else { throw TestFailure("openssl req: \(made.stderr)") }
        let child = try ChildProcess(
            Paths.which("python3"),
            [Paths.originScript, "--mode", "https", "--host", "127.0.0.1", "--cert", pki.serverCertificate,
             "--key", pki.serverKey, "--swap-cert", pki.directory + "/other.pem", "--swap-key", pki.directory + "/other.key",
             "--no-tickets"])
        let line = try child.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }
        guard let port = Int(line.dropFirst(5)) else { throw TestFailure("origin printed \(line)") }
        return (child, port)
    }

    /// The proxy's port once it logs `proxy listening on 127.0.0.1:PORT` (waiting up to 30 s for the line).
    func listeningPort() throws -> Int {
        try loggedPort(after: "proxy listening on 127.0.0.1:")
    }

    /// The admin listener's port, from `admin listener on 127.0.0.1:PORT`.
    func adminPort() throws -> Int {
        try loggedPort(after: "admin listener on 127.0.0.1:")
    }

    private func loggedPort(after marker: String) throws -> Int {
        let stderr = try waitForStderr(containing: marker, timeout: 30)
        guard let port = Int(stderr.components(separatedBy: marker)[1].prefix(while: \.isNumber)) else {
            throw TestFailure("no port after \(marker) in \(stderr)")
        }
        return port
    }
}

enum Paths {
    /// Tests/EndToEndTests
    static let endToEndDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent()
    /// Tests
    static let testsDirectory = endToEndDirectory.deletingLastPathComponent()
    static let originScript = endToEndDirectory.appendingPathComponent("origin.py").path
    static let packageRoot = testsDirectory.deletingLastPathComponent()

    /// The `kaizen-egress` binary built beside the test bundle, or the one `KAIZEN_TEST_BINARY` names (to run
    /// the end-to-end tests against a release build: `KAIZEN_TEST_BINARY=$PWD/.build/kaizen-egress-release`).
    static var proxyBinary: String {
        if let chosen = ProcessInfo.processInfo.environment["KAIZEN_TEST_BINARY"], !chosen.isEmpty { return chosen }
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
            Bundle.main.bundleURL,
            Bundle.main.bundleURL.deletingLastPathComponent(),
            packageRoot.appendingPathComponent(".build/debug"),
        ]
        for directory in candidates {
            let path = directory.appendingPathComponent("kaizen-egress").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return packageRoot.appendingPathComponent(".build/debug/kaizen-egress").path
    }

    static func which(_ name: String) -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return "/usr/bin/\(name)"
    }
}

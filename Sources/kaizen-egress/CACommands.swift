import ArgumentParser
import EgressProxy
import Foundation
import Interception
import OpenSSLTLS

/// `kaizen-egress ca …`: make and check the CA that inspection mode signs leaves with.
struct CA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "Make or check the inspection CA (KAIZEN_CA_CERT, KAIZEN_CA_KEY).",
        subcommands: [CAInit.self, CADoctor.self]
    )
}

/// Writes a new ECDSA P-256 CA that passes every check, never overwriting anything.
struct CAInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Write a new inspection CA to DIR/ca.pem and DIR/ca.key (0600); never overwrites."
    )

    @Argument(help: "Directory for ca.pem and ca.key (created 0700 if missing).")
    var directory: String

    @Option(help: "The CA's common name.")
    var name: String = "Kaizen egress inspection CA"

    @Option(help: "Days the CA is valid.")
    var days: Int = 365

    func run() throws {
        guard (1...3650).contains(days) else { fail("--days \(days): give a number of days from 1 to 3650") }
        // X.509's upper bound for a common name is 64 characters; a line break in one shows in every client's dialog.
        guard (1...64).contains(name.count), !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            fail("--name: give 1 to 64 printable characters (X.509's limit for a common name)")
        }
        let madeDirectory = mkdir(directory, 0o700) == 0
        if !madeDirectory && errno != EEXIST {
            fail("cannot create \(directory): \(String(cString: strerror(errno))): give a directory you can write")
        }
        let certificatePath = directory + "/ca.pem"
        let keyPath = directory + "/ca.key"
        // Any entry counts, a dangling symbolic link too (writing through one is refused, and would leave the key alone).
        var entry = stat()
        for path in [certificatePath, keyPath] where lstat(path, &entry) == 0 {
            fail("\(path) already exists; ca init never overwrites: choose an empty directory, or remove the old CA first")
        }
        let key: OpenSSLPrivateKey
        let certificate: OpenSSLCertificate
        var wroteKey = false
        do {
            key = try .generateP256()
            certificate = try OpenSSLCertificateAuthority.selfSignedCA(
                commonName: name, organization: "kaizen-egress", key: key,
                now: Int64(Date().timeIntervalSince1970), lifetime: Int64(days) * 86_400)
            try write(try key.pemBytes(), to: keyPath, mode: 0o600)
            wroteKey = true
            try write(try certificate.pemBytes(), to: certificatePath, mode: 0o644)
        } catch {
            // Nothing half-made is left behind to block a second try: the key without its certificate, a new directory.
            if wroteKey { unlink(keyPath) }
            if madeDirectory { rmdir(directory) }
            fail("\(error)")
        }
        print("""
            Wrote \(certificatePath) (the CA certificate: give it to clients to trust)
              and \(keyPath) (its private key, mode 0600: keep it secret, readable by the proxy only).
            Turn inspection on with:
              export KAIZEN_CA_CERT=\(certificatePath) KAIZEN_CA_KEY=\(keyPath)
            then run `kaizen-egress ca doctor` to see how to make your clients trust it.
            """)
    }
}

/// Runs the CA checks on the configured CA and prints how to make common clients trust it.
struct CADoctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check the configured CA and show how to make clients trust it."
    )

    @Option(help: "CA certificate. (env KAIZEN_CA_CERT)")
    var caCert: String?

    @Option(help: "CA private key. (env KAIZEN_CA_KEY)")
    var caKey: String?

    @Option(help: "Also write a bundle of the system's trusted CAs plus this CA to this new file.")
    var writeBundle: String?

    @Option(help: "The system's trusted CAs for --write-bundle (default: OpenSSL's default CA file; never SSL_CERT_FILE).")
    var systemCas: String?

    func run() throws {
        let environment = ProcessInfo.processInfo.environment
        guard let certificatePath = caCert ?? environment["KAIZEN_CA_CERT"], !certificatePath.isEmpty else {
            fail("KAIZEN_CA_CERT is not set: set KAIZEN_CA_CERT (or --ca-cert) to the CA certificate; make one with kaizen-egress ca init DIR")
        }
        guard let keyPath = caKey ?? environment["KAIZEN_CA_KEY"], !keyPath.isEmpty else {
            fail("KAIZEN_CA_KEY is not set: set KAIZEN_CA_KEY (or --ca-key) to the CA's private key")
        }
        let authority: OpenSSLCertificateAuthority
        let warnings: [String]
        do {
            (authority, warnings) = try CustomerCA.load(
                certificateFile: certificatePath, keyFile: keyPath, now: Int64(Date().timeIntervalSince1970))
        } catch {
            fail(error.message)
        }
        let ca = authority.certificate
        print("CA: \(ca.subjectDescription)")
        print("  valid until \(ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(ca.notAfter))))")
        print("  checks: certificates only, in chain order; key matches; CA:TRUE (critical); keyCertSign; subjectKeyIdentifier; EKU allows serverAuth; in validity; keys and signatures strong enough for TLS; key file private: OK")
        for warning in warnings { print("  warning: \(warning)") }
        // The start's own warnings, for the trust stores a proxy started from this environment would read.
        func file(_ key: ConfigurationKey) -> String? {
            environment[key.variable].map { $0.trimmingCharacters(in: .whitespaces) }.flatMap { $0.isEmpty ? nil : $0 }
        }
        let trust = InspectionCATrust.warnings(
            ca: ca, upstreamCAFile: file(.upstreamCAFile), apiCAFile: file(.apiCAFile))
        for warning in trust { print("  warning: \(warning)") }
        if ca.hasNameConstraints { print("  name constraints: names outside them are passed through, not inspected") }

        var bundlePath = "BUNDLE"
        if let writeBundle {
            do {
                let system = try systemCas ?? Self.systemBundle()
                let systemText = Array(try Data(contentsOf: URL(fileURLWithPath: system)))
                let systemCertificates = try OpenSSLCertificate.chain(pem: systemText)
                // OpenSSL stops at the first block it cannot read: every system CA after it would be missing.
                let blocks = String(decoding: systemText, as: UTF8.self).components(separatedBy: "-----BEGIN CERTIFICATE-----").count - 1
                guard systemCertificates.count == blocks else {
                    fail("--write-bundle: \(system) holds \(blocks) certificates but only the first \(systemCertificates.count) could be read, so the bundle would miss the rest: repair that file (or give another with --system-cas)")
                }
                // Certificates only, each once (by DER): a CA already in the system store is not added again.
                var seen = Set<[UInt8]>()
                var bytes: [UInt8] = []
                var added = 0
                for (index, certificate) in (systemCertificates + authority.chain).enumerated()
                where seen.insert(certificate.derBytes).inserted {
                    bytes += try certificate.pemBytes()
                    if index >= systemCertificates.count { added += 1 }
                }
                try write(bytes, to: writeBundle, mode: 0o644)
                bundlePath = writeBundle
                let what = added == authority.chain.count
                    ? "plus this CA" : added == 0 ? "(this CA is already among them)" : "plus \(added) certificates of this CA's file"
                let resolved = URL(fileURLWithPath: system).resolvingSymlinksInPath().path
                let source = resolved == system ? system : "\(system) (\(resolved))"
                print("\nWrote \(writeBundle): the \(seen.count - added) system CAs from \(source) \(what).")
            } catch let error as OpenSSLError {
                fail("--write-bundle \(writeBundle): \(error): give --system-cas a PEM file of trusted CAs")
            } catch {
                fail("--write-bundle \(writeBundle): \(error)")
            }
        }
        print("""

            Make clients trust it (BUNDLE = the system's CAs plus this one; --write-bundle FILE writes it):
              export SSL_CERT_FILE=\(bundlePath)          # OpenSSL-based clients: Python ssl, Ruby, PHP, many CLIs
              export REQUESTS_CA_BUNDLE=\(bundlePath)     # Python requests, httpx
              export CURL_CA_BUNDLE=\(bundlePath)         # curl
              export GIT_SSL_CAINFO=\(bundlePath)         # git
              export NODE_EXTRA_CA_CERTS=\(certificatePath)   # Node.js (added to its own store)
              keytool -importcert -noprompt -alias kaizen-egress -file \(certificatePath) -cacerts -storepass changeit   # Java
            Then point the agent at the proxy: HTTPS_PROXY=http://127.0.0.1:8080 HTTP_PROXY=http://127.0.0.1:8080
            """)
    }

    /// The system's CA bundle: OpenSSL's default CA file, else the distributions' usual places. Never SSL_CERT_FILE:
    /// the doctor tells users to point it at the bundle it writes, so the next bundle (after the CA is rotated) would
    /// still trust the old CA, and hold this one twice.
    static func systemBundle() throws -> String {
        let candidates = [
            OpenSSLLibrary.defaultCertificateFile, "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem", "/etc/ssl/ca-bundle.pem",
        ]
        guard let found = candidates.first(where: { FileManager.default.isReadableFile(atPath: $0) }) else {
            throw ValidationError(
                "no system CA bundle found in \(candidates.joined(separator: ", ")): install ca-certificates, or give --system-cas FILE")
        }
        return found
    }
}

/// Creates `path` (never replacing a file) with `mode`, and writes `bytes`.
func write(_ bytes: [UInt8], to path: String, mode: mode_t) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
    guard fd >= 0 else {
        if errno == EEXIST {
            throw ValidationError("cannot create \(path): it already exists, and is never replaced: remove it or give another path")
        }
        throw ValidationError("cannot create \(path): \(String(cString: strerror(errno)))")
    }
    defer { close(fd) }
    var offset = 0
    while offset < bytes.count {
        let written = bytes[offset...].withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        if written < 0 {
            if errno == EINTR { continue }
            throw ValidationError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
        offset += written
    }
}

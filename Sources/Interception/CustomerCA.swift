public import OpenSSLTLS

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The customer's CA for inspection (`KAIZEN_CA_CERT`, `KAIZEN_CA_KEY`), loaded and checked so that what it
/// signs is accepted by strict clients. Every problem is one line naming the variable and the fix.
public enum CustomerCA {
    /// A reason the CA cannot be used; `variable` is the setting to change.
    public struct Problem: Error, Sendable, Hashable, CustomStringConvertible {
        public var variable: String
        public var message: String
        public var description: String { message }
    }

    public static let certificateVariable = "KAIZEN_CA_CERT"
    public static let keyVariable = "KAIZEN_CA_KEY"
    /// A CA that expires sooner than this is used, with a warning.
    public static let expiryWarning: Int64 = 7 * 86_400

    /// Loads the CA and runs every check. Returns the authority and any warnings (use it, but tell someone).
    public static func load(
        certificateFile: String,
        keyFile: String,
        now: Int64
    ) throws(Problem) -> (OpenSSLCertificateAuthority, warnings: [String]) {
        let certificateBytes = try readFile(certificateFile, variable: certificateVariable, what: "the CA certificate (PEM)")
        try checkCertificatesOnly(certificateBytes, file: certificateFile)
        try checkNothingAfterDER(certificateBytes, file: certificateFile)
        let chain: [OpenSSLCertificate]
        do {
            chain = try OpenSSLCertificate.chain(pemOrDER: certificateBytes)
        } catch {
            throw Problem(
                variable: certificateVariable,
                message: "KAIZEN_CA_CERT=\(certificateFile) holds no readable certificate (\(error.entries.first ?? "unparsable")): give the CA certificate in PEM, followed by any intermediates"
            )
        }
        try checkChain(chain, certificateBlocks: pemLabels(certificateBytes).count, file: certificateFile)
        try checkKeyFileMode(keyFile)
        let keyBytes = try readFile(keyFile, variable: keyVariable, what: "the CA private key (PEM)")
        let key: OpenSSLPrivateKey
        do {
            key = try OpenSSLPrivateKey(pemOrDER: keyBytes)
        } catch {
            // PKCS #8 (`BEGIN ENCRYPTED PRIVATE KEY`) or the traditional form's `Proc-Type: 4,ENCRYPTED`, wherever the
            // block starts (a file exported from PKCS #12 begins with `Bag Attributes` lines).
            let text = String(decoding: keyBytes, as: UTF8.self)
            let encrypted = text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || text.contains("Proc-Type: 4,ENCRYPTED")
            throw Problem(
                variable: keyVariable,
                message: encrypted
                    ? "KAIZEN_CA_KEY=\(keyFile) is encrypted: give an unencrypted key (openssl pkey -in KEY -out PLAIN.key) kept readable by the proxy only"
                    : "KAIZEN_CA_KEY=\(keyFile) holds no readable private key: give the CA's private key in PEM"
            )
        }
        let authority: OpenSSLCertificateAuthority
        do {
            authority = try OpenSSLCertificateAuthority(chain: chain, key: key)
        } catch {
            throw Problem(
                variable: keyVariable,
                message: "KAIZEN_CA_KEY=\(keyFile) is not the key of the certificate in KAIZEN_CA_CERT (\(chain[0].subjectDescription)): give the key the CA was made with"
            )
        }
        try checkStrength(chain)
        let warnings = try check(chain[0], now: now)
        return (authority, warnings)
    }

    /// Every certificate of the chain is as strong as TLS requires, in its key and (but a root's) its signature:
    /// OpenSSL refuses a weaker chain on every inspected connection ("ca key too small"), so it is refused here.
    public static func checkStrength(
        _ chain: [OpenSSLCertificate], minimumBits: Int = OpenSSLCertificateAuthority.minimumSecurityBits
    ) throws(Problem) {
        let needed = "below the \(minimumBits) TLS requires (RSA 2048 bits, ECDSA P-256), so every inspected connection would fail"
        for (index, certificate) in chain.enumerated() {
            let which = index == 0
                ? "KAIZEN_CA_CERT (\(certificate.subjectDescription))"
                : "KAIZEN_CA_CERT's certificate \(index + 1) (\(certificate.subjectDescription))"
            let fix = index == 0
                ? "make a suitable CA with: kaizen-egress ca init DIR (ECDSA P-256), or use RSA of 2048 bits or more"
                : "replace that certificate with a stronger one"
            let keyBits = certificate.publicKeySecurityBits
            if keyBits < minimumBits {
                throw Problem(
                    variable: certificateVariable,
                    message: "\(which) has too weak a key: \(certificate.publicKeyDescription), \(keyBits) security bits, \(needed): \(fix)")
            }
            if !certificate.isSelfSigned, let signatureBits = certificate.signatureSecurityBits, signatureBits < minimumBits {
                throw Problem(
                    variable: certificateVariable,
                    message: "\(which) has too weak a signature: \(certificate.signatureAlgorithm), \(signatureBits) security bits, \(needed): \(fix)")
            }
        }
    }

    /// The checks on the signing certificate; throws the first failure, returns warnings.
    public static func check(_ ca: OpenSSLCertificate, now: Int64) throws(Problem) -> [String] {
        let subject = ca.subjectDescription
        func problem(_ text: String) -> Problem {
            Problem(variable: certificateVariable, message: "KAIZEN_CA_CERT (\(subject)) \(text)")
        }
        let makeOne = "; make a suitable CA with: kaizen-egress ca init DIR"
        guard let constraints = ca.basicConstraints, constraints.isCA else {
            throw problem("is not a CA certificate: basicConstraints CA:TRUE is required" + makeOne)
        }
        guard constraints.isCritical else {
            throw problem("has basicConstraints CA:TRUE but not marked critical, which strict clients refuse" + makeOne)
        }
        guard ca.hasKeyUsage else {
            throw problem("has no keyUsage extension; strict clients require keyUsage with keyCertSign on a CA" + makeOne)
        }
        guard ca.keyUsageAllowsCertificateSigning else {
            throw problem("has a keyUsage without keyCertSign, so it cannot sign certificates" + makeOne)
        }
        guard ca.subjectKeyIdentifier != nil else {
            throw problem("has no subjectKeyIdentifier, which the minted leaves' authorityKeyIdentifier must match" + makeOne)
        }
        guard ca.extendedKeyUsageAllowsServerAuth else {
            throw problem("has an extendedKeyUsage without serverAuth, so leaves it signs are refused for TLS servers" + makeOne)
        }
        guard ca.notBefore <= now else {
            throw problem("is not valid until \(WallTime.rfc3339(ca.notBefore)): check the machine's clock or use a CA already valid")
        }
        guard ca.notAfter > now else {
            throw problem("expired at \(WallTime.rfc3339(ca.notAfter)): renew it (kaizen-egress ca init DIR makes a new one) and trust the new one")
        }
        if ca.notAfter - now < expiryWarning {
            return ["KAIZEN_CA_CERT (\(subject)) expires at \(WallTime.rfc3339(ca.notAfter)), in less than 7 days: renew it and trust the new one before then"]
        }
        return []
    }

    /// Every certificate block was read (OpenSSL's reader stops quietly at the first it cannot decode), and each
    /// certificate after the first issued the one before it: they are sent after every leaf as its chain, where
    /// anything else makes clients fail or build the chain some other way.
    static func checkChain(_ chain: [OpenSSLCertificate], certificateBlocks: Int, file: String) throws(Problem) {
        let fix = "after the CA certificate put only the certificates above it, each followed by its issuer, or give the CA certificate alone"
        if certificateBlocks > chain.count {
            throw Problem(
                variable: certificateVariable,
                message: "KAIZEN_CA_CERT=\(file) holds \(certificateBlocks) certificate blocks, and certificate \(chain.count + 1) cannot be read (damaged or cut short): give whole PEM certificates only; \(fix)"
            )
        }
        for index in chain.indices.dropFirst() {
            let (subject, issuer) = (chain[index - 1], chain[index])
            let named = "certificate \(index + 1) (\(issuer.subjectDescription))"
            // A self-signed root ends a chain, unless the certificate after it is the same CA (its subject and key)
            // cross-signed by another root, which clients that trust only that other root need.
            if subject.isSelfSigned, !issuer.issued(subject) || issuer.derBytes == subject.derBytes {
                throw Problem(
                    variable: certificateVariable,
                    message: "KAIZEN_CA_CERT=\(file): \(named) follows a self-signed root, which ends a chain: remove it; \(fix)"
                )
            }
            guard issuer.issued(subject) else {
                throw Problem(
                    variable: certificateVariable,
                    message: "KAIZEN_CA_CERT=\(file): \(named) is not the issuer of certificate \(index) (\(subject.subjectDescription)): \(fix)"
                )
            }
        }
    }

    /// The PEM labels OpenSSL reads as a certificate.
    static let certificateLabels: Set<String> = ["CERTIFICATE", "X509 CERTIFICATE"]

    /// The certificate file holds certificates and nothing else: OpenSSL's reader skips any other block, so a key
    /// appended to the certificate (`cat ca.pem ca.key`) would pass unseen, and a bundle written from the file would
    /// hand the key to every client. Messages name a block by its label only, never its contents.
    static func checkCertificatesOnly(_ bytes: [UInt8], file: String) throws(Problem) {
        for label in pemLabels(bytes) where !certificateLabels.contains(label) {
            let named = label.utf8.count <= 40 && label.allSatisfy { $0.isASCII && ($0.isUppercase || $0.isNumber || $0 == " ") }
                ? "a block labelled \(label)" : "a block that is not a certificate"
            if label.hasSuffix("PRIVATE KEY") {
                throw Problem(
                    variable: certificateVariable,
                    message: "KAIZEN_CA_CERT=\(file) holds a private key (\(named)) besides certificates: keep the key in KAIZEN_CA_KEY only, and give KAIZEN_CA_CERT the CA certificate (then any intermediates) alone"
                )
            }
            throw Problem(
                variable: certificateVariable,
                message: "KAIZEN_CA_CERT=\(file) holds \(named): give KAIZEN_CA_CERT certificates only (the CA certificate, then any intermediates)"
            )
        }
    }

    /// A DER file is one certificate and nothing more: OpenSSL's reader takes the first certificate and stops, so
    /// whatever follows it (a second certificate run into the first, a key, a file joined wrongly) would pass unseen.
    static func checkNothingAfterDER(_ bytes: [UInt8], file: String) throws(Problem) {
        guard !OpenSSLCertificate.isPEM(bytes), let (_, trailing) = try? OpenSSLCertificate.derPrefix(bytes), trailing > 0
        else { return }
        throw Problem(
            variable: certificateVariable,
            message: "KAIZEN_CA_CERT=\(file) holds \(trailing) bytes after its DER certificate: give the CA certificate alone, or in PEM followed by any intermediates (openssl x509 -inform DER -in \(file) -out ca.pem)"
        )
    }

    /// The labels of the PEM blocks in `bytes` (`CERTIFICATE`, `PRIVATE KEY`…), in order; none for DER.
    static func pemLabels(_ bytes: [UInt8]) -> [String] {
        String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isNewline).compactMap { line in
            let trimmed = line.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed()
            let text = String(trimmed)
            guard text.hasPrefix("-----BEGIN "), text.hasSuffix("-----"), text.count >= 16 else { return nil }
            return String(text.dropFirst(11).dropLast(5))
        }
    }

    /// The key must not be readable by the group or others.
    static func checkKeyFileMode(_ path: String) throws(Problem) {
        var status = stat()
        guard stat(path, &status) == 0 else {
            // Not the value: one that names no file may be the key itself, pasted where its path goes.
            throw Problem(
                variable: keyVariable,
                message: "KAIZEN_CA_KEY names no readable file (\(String(cString: strerror(errno))); its value is not shown, as it may be the key itself): set KAIZEN_CA_KEY to the path of the CA's private key file"
            )
        }
        guard status.st_mode & 0o044 == 0 else {
            throw Problem(
                variable: keyVariable,
                message: "KAIZEN_CA_KEY=\(path) is readable by other users (mode \(String(status.st_mode & 0o777, radix: 8))): run chmod 600 \(path)"
            )
        }
    }

    static func readFile(_ path: String, variable: String, what: String) throws(Problem) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let reason = String(cString: strerror(errno))
            // The key's value is never shown: one that names no file may be the key itself.
            throw Problem(
                variable: variable,
                message: variable == keyVariable
                    ? "\(variable) names no readable file (\(reason); its value is not shown, as it may be the key itself): set \(variable) to \(what)"
                    : "\(variable)=\(path) cannot be read (\(reason)): set \(variable) to \(what)"
            )
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while bytes.count <= 1 << 20 {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            bytes += chunk[0..<count]
        }
        return bytes
    }
}

/// RFC 3339 for messages (UTC, seconds).
enum WallTime {
    static func rfc3339(_ seconds: Int64) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }
}

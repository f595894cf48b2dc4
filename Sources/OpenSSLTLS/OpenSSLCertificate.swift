internal import CSSL

/// One X.509 certificate: the owner of an `X509*`, freed when the last Swift reference goes.
///
/// Immutable once built, so it is shared freely between connections and threads (OpenSSL reference-counts
/// an `X509` that a connection also uses).
public final class OpenSSLCertificate: @unchecked Sendable, Hashable {
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit {
        X509_free(pointer)
    }

    /// One DER-encoded certificate, and nothing after it: `d2i_X509` reads the first certificate and stops, so a
    /// file with more behind it (two certificates run together, a key appended) would pass as that certificate alone.
    public convenience init(der: [UInt8]) throws(OpenSSLError) {
        let (parsed, trailing) = try Self.derPrefix(der)
        guard trailing == 0 else {
            throw OpenSSLError(operation: "reading a DER certificate", entries: ["\(trailing) bytes follow the certificate"])
        }
        // The parsed owner frees its reference when it goes; this one holds its own.
        X509_up_ref(parsed.pointer)
        self.init(taking: parsed.pointer)
    }

    /// The certificate at the start of `der`, and how many bytes follow it.
    public static func derPrefix(_ der: [UInt8]) throws(OpenSSLError) -> (OpenSSLCertificate, trailing: Int) {
        OpenSSLError.clearQueue()
        var consumed = 0
        let parsed: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var cursor: UnsafePointer<UInt8>? = buffer.baseAddress
            let certificate = d2i_X509(nil, &cursor, buffer.count)
            if let cursor, let start = buffer.baseAddress { consumed = cursor - start }
            return certificate
        }
        guard let parsed else { throw OpenSSLError.drain(operation: "reading a DER certificate") }
        return (OpenSSLCertificate(taking: parsed), der.count - consumed)
    }

    /// Whether `bytes` are PEM text (a `-----BEGIN` line) rather than DER.
    public static func isPEM(_ bytes: [UInt8]) -> Bool { PEMDetection.looksLikePEM(bytes) }

    /// Every certificate in PEM text, in order; at least one.
    public static func chain(pem: [UInt8]) throws(OpenSSLError) -> [OpenSSLCertificate] {
        OpenSSLError.clearQueue()
        var chain: [OpenSSLCertificate] = []
        pem.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return }
            defer { BIO_free(bio) }
            while let next = PEM_read_bio_X509(bio, nil, noPassphrase, nil) {
                chain.append(OpenSSLCertificate(taking: next))
            }
        }
        guard !chain.isEmpty else { throw OpenSSLError.drain(operation: "reading a PEM certificate") }
        // Reading stops at the end of the text with a "no start line" entry; that is not an error.
        OpenSSLError.clearQueue()
        return chain
    }

    /// The certificates in `bytes`: PEM (one or more, leaf first) or a single DER certificate.
    public static func chain(pemOrDER bytes: [UInt8]) throws(OpenSSLError) -> [OpenSSLCertificate] {
        if PEMDetection.looksLikePEM(bytes) { return try chain(pem: bytes) }
        return [try OpenSSLCertificate(der: bytes)]
    }

    /// The certificate in DER form.
    public var derBytes: [UInt8] {
        let length = i2d_X509(pointer, nil)
        guard length > 0 else { return [] }
        var bytes = [UInt8](repeating: 0, count: Int(length))
        bytes.withUnsafeMutableBufferPointer { buffer in
            var cursor: UnsafeMutablePointer<UInt8>? = buffer.baseAddress
            _ = i2d_X509(pointer, &cursor)
        }
        return bytes
    }

    public static func == (lhs: OpenSSLCertificate, rhs: OpenSSLCertificate) -> Bool {
        X509_cmp(lhs.pointer, rhs.pointer) == 0
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(derBytes)
    }
}

/// A private key: the owner of an `EVP_PKEY*`. Never printed: its description names only its type.
public final class OpenSSLPrivateKey: @unchecked Sendable, CustomStringConvertible {
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit {
        EVP_PKEY_free(pointer)
    }

    /// A key in PEM (PKCS #8 or the traditional RSA/EC forms, unencrypted) or DER. An encrypted key fails at once: no
    /// passphrase is ever asked for.
    public convenience init(pemOrDER bytes: [UInt8]) throws(OpenSSLError) {
        OpenSSLError.clearQueue()
        let parsed: OpaquePointer?
        if PEMDetection.looksLikePEM(bytes) {
            parsed = bytes.withUnsafeBytes { raw -> OpaquePointer? in
                guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
                defer { BIO_free(bio) }
                return PEM_read_bio_PrivateKey(bio, nil, noPassphrase, nil)
            }
        } else {
            parsed = bytes.withUnsafeBufferPointer { buffer in
                var cursor: UnsafePointer<UInt8>? = buffer.baseAddress
                return d2i_AutoPrivateKey(nil, &cursor, buffer.count)
            }
        }
        // The error entries name the failing decoder, never the key's bytes.
        guard let parsed else { throw OpenSSLError.drain(operation: "reading the private key") }
        self.init(taking: parsed)
    }

    public var description: String { "OpenSSLPrivateKey(<redacted>)" }
}

/// A certificate chain (leaf first) with the private key of its leaf: what a TLS server presents.
public struct OpenSSLCertifiedKey: Sendable {
    public let chain: [OpenSSLCertificate]
    public let key: OpenSSLPrivateKey

    /// Checks that the key belongs to the leaf.
    public init(chain: [OpenSSLCertificate], key: OpenSSLPrivateKey) throws(OpenSSLError) {
        guard let leaf = chain.first else {
            throw OpenSSLError(operation: "pairing a certificate with its key", entries: ["the chain is empty"])
        }
        OpenSSLError.clearQueue()
        guard X509_check_private_key(leaf.pointer, key.pointer) == 1 else {
            throw OpenSSLError.drain(operation: "matching the private key to the certificate")
        }
        self.chain = chain
        self.key = key
    }

    /// Loads a chain file and a key file, each PEM or DER.
    public init(chainFile: String, keyFile: String) throws(OpenSSLError) {
        let chain = try OpenSSLCertificate.chain(pemOrDER: try FileBytes.read(chainFile, what: "the certificate chain"))
        let key = try OpenSSLPrivateKey(pemOrDER: try FileBytes.read(keyFile, what: "the private key"))
        try self.init(chain: chain, key: key)
    }

    public var leaf: OpenSSLCertificate { chain[0] }
}

/// The passphrase callback for every PEM read: there is none. Without a callback OpenSSL asks for one on the
/// terminal when a PEM block is encrypted, and its prompt holds every signal but SIGKILL meanwhile: `ca doctor` and the
/// proxy's start would wait for a passphrase instead of failing, and a reload on SIGHUP would block for good, deaf to
/// SIGTERM. -1 is "no passphrase": the read fails, naming a bad password read.
func noPassphrase(_ buffer: UnsafeMutablePointer<CChar>?, _ size: Int32, _ writing: Int32, _ context: UnsafeMutableRawPointer?) -> Int32 {
    -1
}

enum PEMDetection {
    /// PEM is text with a `-----BEGIN` line; DER starts with an ASN.1 SEQUENCE byte (0x30).
    static func looksLikePEM(_ bytes: [UInt8]) -> Bool {
        let marker = Array("-----BEGIN".utf8)
        guard bytes.count >= marker.count else { return false }
        if bytes.first == 0x30 { return false }
        for start in 0...(bytes.count - marker.count) where bytes[start] == marker[0] {
            if Array(bytes[start..<start + marker.count]) == marker { return true }
        }
        return false
    }
}

enum FileBytes {
    /// The whole file; the error names the path and the system's reason.
    static func read(_ path: String, what: String) throws(OpenSSLError) -> [UInt8] {
        OpenSSLError.clearQueue()
        guard let bio = BIO_new_file(path, "rb") else {
            throw OpenSSLError.drain(operation: "opening \(what) \(path)")
        }
        defer { BIO_free(bio) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = chunk.withUnsafeMutableBytes { BIO_read(bio, $0.baseAddress, Int32($0.count)) }
            if count <= 0 { break }
            bytes.append(contentsOf: chunk.prefix(Int(count)))
            if bytes.count > 16 << 20 {
                throw OpenSSLError(operation: "reading \(what) \(path)", entries: ["larger than 16 MiB"])
            }
        }
        return bytes
    }
}

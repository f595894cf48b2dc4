internal import CSSL

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A certificate authority that signs leaf certificates: the customer's CA, loaded from its certificate
/// (followed by any intermediates, sent in every chain) and its key. Immutable and thread-safe.
///
/// Leaves are what strict clients (Python's `VERIFY_X509_STRICT`, Go, Apple, Firefox) accept: v3, SHA-256,
/// 128-bit positive random serial, issuer = the CA's subject byte for byte, subject CN = the name when it fits
/// in 64 characters (otherwise an empty subject and a critical SAN), SAN = exactly the name, EKU serverAuth,
/// keyUsage digitalSignature (critical), basicConstraints CA:FALSE, authorityKeyIdentifier = the CA's SKI,
/// no subjectKeyIdentifier, valid from an hour ago for 30 days or until the CA expires.
public final class OpenSSLCertificateAuthority: @unchecked Sendable {
    // @unchecked Sendable: immutable after init; signing only reads the key and certificate.

    /// What a leaf is for: a DNS name (from SNI) or an IP address (a client that sent no SNI).
    public enum LeafName: Sendable, Hashable, CustomStringConvertible {
        case dns(String)
        case ip(String)

        public var description: String {
            switch self {
            case .dns(let name): name
            case .ip(let address): address
            }
        }
    }

    public enum MintingError: Error, Sendable, Hashable, CustomStringConvertible {
        /// The CA's nameConstraints do not allow this name: no leaf is made.
        case outsideNameConstraints(String)
        /// Not a name a certificate can carry (not an LDH host name or an IP address).
        case invalidName(String)
        case openSSL(OpenSSLError)

        public var description: String {
            switch self {
            case .outsideNameConstraints(let name): "\(name) is outside the CA's name constraints"
            case .invalidName(let name): "\(name) is not a host name or IP address a certificate can name"
            case .openSSL(let error): "\(error)"
            }
        }
    }

    /// The security bits each certificate of the CA's chain needs, in its key and (unless self-signed) its signature:
    /// what the TLS contexts' security level requires (the proxy sets none, so OpenSSL's default, 2 on Debian and
    /// Ubuntu: 112 bits) and never under 112, as clients refuse RSA under 2048 bits too. A weaker chain is refused
    /// by OpenSSL on every handshake that sends it ("ca key too small", "ca md too weak").
    public static let minimumSecurityBits: Int = {
        let levelBits = [0, 80, 112, 128, 192, 256]
        guard let context = SSL_CTX_new(TLS_server_method()) else { return 112 }
        defer { SSL_CTX_free(context) }
        let level = Int(SSL_CTX_get_security_level(context))
        return max(112, levelBits[min(max(level, 0), levelBits.count - 1)])
    }()

    /// The signing CA first, then the intermediates above it.
    public let chain: [OpenSSLCertificate]
    private let key: OpenSSLPrivateKey

    public init(chain: [OpenSSLCertificate], key: OpenSSLPrivateKey) throws(OpenSSLError) {
        guard let signer = chain.first else {
            throw OpenSSLError(operation: "loading the CA", entries: ["the certificate file holds no certificate"])
        }
        OpenSSLError.clearQueue()
        guard X509_check_private_key(signer.pointer, key.pointer) == 1 else {
            throw OpenSSLError.drain(operation: "matching the CA key to the CA certificate")
        }
        self.chain = chain
        self.key = key
    }

    public var certificate: OpenSSLCertificate { chain[0] }

    /// Whether any certificate of the chain limits the names it may sign.
    public var hasNameConstraints: Bool { chain.contains { $0.hasNameConstraints } }

    /// A leaf for `name` with the public half of `leafKey`, valid from `now` − 1 h for `lifetime` seconds
    /// (cut at the CA's own expiry). The chain returned is the leaf followed by this CA's chain.
    public func mintLeaf(
        for name: LeafName,
        key leafKey: OpenSSLPrivateKey,
        now: Int64,
        lifetime: Int64 = 30 * 86_400
    ) throws(MintingError) -> OpenSSLCertifiedKey {
        try Self.validate(name)
        OpenSSLError.clearQueue()
        guard let leaf = X509_new() else { throw .openSSL(.drain(operation: "allocating a certificate")) }
        let owned = OpenSSLCertificate(taking: leaf)  // frees it on every path
        let notBefore = now - 3600
        let notAfter = min(notBefore + lifetime, certificate.notAfter)
        var ok = X509_set_version(leaf, 2) == 1
        ok = ok && Self.setRandomSerial(leaf)
        ok = ok && X509_set_issuer_name(leaf, X509_get_subject_name(certificate.pointer)) == 1
        ok = ok && ASN1_TIME_set(X509_getm_notBefore(leaf), time_t(notBefore)) != nil
        ok = ok && ASN1_TIME_set(X509_getm_notAfter(leaf), time_t(notAfter)) != nil
        ok = ok && X509_set_pubkey(leaf, leafKey.pointer) == 1
        let text = name.description
        let subjectHasName: Bool
        if case .dns = name, text.utf8.count <= 64 {
            subjectHasName = true
            ok = ok && Self.setSubjectCommonName(leaf, text)
        } else {
            subjectHasName = false  // an empty subject: the SAN carries the name and is critical (RFC 5280 §4.2.1.6)
        }
        let san: String
        switch name {
        case .dns(let host): san = "DNS:" + host
        case .ip(let address): san = "IP:" + address
        }
        let extensions: [(Int32, String)] = [
            (NID_basic_constraints, "critical,CA:FALSE"),
            (NID_key_usage, "critical,digitalSignature"),
            (NID_ext_key_usage, "serverAuth"),
            (NID_subject_alt_name, (subjectHasName ? "" : "critical,") + san),
            (NID_authority_key_identifier, "keyid:always"),
        ]
        for (nid, value) in extensions where ok {
            ok = addExtension(to: leaf, nid: nid, value: value)
        }
        guard ok else { throw .openSSL(.drain(operation: "building a certificate for \(text)")) }
        guard X509_sign(leaf, key.pointer, Self.digest(for: key)) > 0 else {
            throw .openSSL(.drain(operation: "signing a certificate for \(text)"))
        }
        try checkNameConstraints(leaf, name: text)
        do {
            return try OpenSSLCertifiedKey(chain: [owned] + chain, key: leafKey)
        } catch {
            throw .openSSL(error)
        }
    }

    /// A new self-signed CA certificate for `key`: CA:TRUE (critical), keyUsage keyCertSign + cRLSign
    /// (critical), a subjectKeyIdentifier, SHA-256, valid from `now` − 1 h for `lifetime` seconds.
    public static func selfSignedCA(
        commonName: String,
        organization: String?,
        key: OpenSSLPrivateKey,
        now: Int64,
        lifetime: Int64
    ) throws(OpenSSLError) -> OpenSSLCertificate {
        OpenSSLError.clearQueue()
        guard let certificate = X509_new() else { throw .drain(operation: "allocating a certificate") }
        let owned = OpenSSLCertificate(taking: certificate)
        var ok = X509_set_version(certificate, 2) == 1
        ok = ok && setRandomSerial(certificate)
        ok = ok && ASN1_TIME_set(X509_getm_notBefore(certificate), time_t(now - 3600)) != nil
        ok = ok && ASN1_TIME_set(X509_getm_notAfter(certificate), time_t(now - 3600 + lifetime)) != nil
        ok = ok && X509_set_pubkey(certificate, key.pointer) == 1
        if let organization { ok = ok && addNameEntry(X509_get_subject_name(certificate), "O", organization) }
        ok = ok && addNameEntry(X509_get_subject_name(certificate), "CN", commonName)
        ok = ok && X509_set_issuer_name(certificate, X509_get_subject_name(certificate)) == 1
        let extensions: [(Int32, String)] = [
            (NID_basic_constraints, "critical,CA:TRUE"),
            (NID_key_usage, "critical,keyCertSign,cRLSign"),
            (NID_subject_key_identifier, "hash"),
        ]
        for (nid, value) in extensions where ok {
            ok = addExtension(to: certificate, issuer: certificate, nid: nid, value: value)
        }
        guard ok, X509_sign(certificate, key.pointer, digest(for: key)) > 0 else {
            throw .drain(operation: "making a CA certificate")
        }
        return owned
    }

    // MARK: internals

    private func addExtension(to leaf: OpaquePointer, nid: Int32, value: String) -> Bool {
        Self.addExtension(to: leaf, issuer: certificate.pointer, nid: nid, value: value)
    }

    private static func addExtension(to subject: OpaquePointer, issuer: OpaquePointer, nid: Int32, value: String) -> Bool {
        var context = X509V3_CTX()
        X509V3_set_ctx(&context, issuer, subject, nil, nil, 0)
        guard let created = X509V3_EXT_conf_nid(nil, &context, nid, value) else { return false }
        defer { X509_EXTENSION_free(created) }
        return X509_add_ext(subject, created, -1) == 1
    }

    private static func setSubjectCommonName(_ certificate: OpaquePointer, _ name: String) -> Bool {
        addNameEntry(X509_get_subject_name(certificate), "CN", name)
    }

    private static func addNameEntry(_ name: OpaquePointer?, _ field: String, _ value: String) -> Bool {
        guard let name else { return false }
        let bytes = Array(value.utf8)
        return X509_NAME_add_entry_by_txt(name, field, CSSL_MBSTRING_UTF8(), bytes, Int32(bytes.count), -1, 0) == 1
    }

    /// 128 random bits, as a positive INTEGER (DER adds a zero byte when the top bit is set).
    private static func setRandomSerial(_ certificate: OpaquePointer) -> Bool {
        guard let number = BN_new() else { return false }
        defer { BN_free(number) }
        guard BN_rand(number, 128, -1, 0) == 1, BN_is_zero(number) == 0 else { return false }
        return BN_to_ASN1_INTEGER(number, X509_get_serialNumber(certificate)) != nil
    }

    /// SHA-256, except for keys that hash internally (Ed25519/Ed448 take no digest).
    private static func digest(for key: OpenSSLPrivateKey) -> OpaquePointer? {
        switch EVP_PKEY_get_base_id(key.pointer) {
        case EVP_PKEY_ED25519, EVP_PKEY_ED448: nil
        default: EVP_sha256()
        }
    }

    private func checkNameConstraints(_ leaf: OpaquePointer, name: String) throws(MintingError) {
        guard chain.contains(where: \.hasNameConstraints) else { return }
        // NAME_CONSTRAINTS_check reads the parsed-extension cache, which a certificate built in memory does
        // not have; a copy of the signed leaf (decoded afresh) gets its own, leaving the leaf as signed.
        guard let copy = X509_dup(leaf) else { throw .openSSL(.drain(operation: "checking name constraints")) }
        defer { X509_free(copy) }
        _ = X509_get_extension_flags(copy)
        for authority in chain where authority.hasNameConstraints {
            guard let raw = X509_get_ext_d2i(authority.pointer, NID_name_constraints, nil, nil) else { continue }
            let constraints = raw.assumingMemoryBound(to: NAME_CONSTRAINTS.self)
            let result = NAME_CONSTRAINTS_check(copy, constraints)
            NAME_CONSTRAINTS_free(constraints)
            if result != X509_V_OK { throw .outsideNameConstraints(name) }
        }
    }

    /// Host names: LDH labels (A-labels for IDNs, as SNI carries them), 1–253 characters, no empty label;
    /// IP addresses: what `inet_pton` accepts.
    public static func validate(_ name: LeafName) throws(MintingError) {
        switch name {
        case .ip(let address):
            guard OpenSSLConnection.isIPAddress(address) else { throw .invalidName(address) }
        case .dns(let host):
            let bytes = Array(host.utf8)
            guard !bytes.isEmpty, bytes.count <= 253 else { throw .invalidName(host) }
            for label in bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
                guard !label.isEmpty, label.count <= 63, label.first != UInt8(ascii: "-"), label.last != UInt8(ascii: "-"),
                    label.allSatisfy({ byte in
                        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x41 && byte <= 0x5a)
                            || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
                    })
                else { throw .invalidName(host) }
            }
        }
    }
}

extension OpenSSLPrivateKey {
    /// A new ECDSA P-256 key.
    public static func generateP256() throws(OpenSSLError) -> OpenSSLPrivateKey {
        OpenSSLError.clearQueue()
        guard let key = CSSL_EVP_EC_gen_P256() else { throw .drain(operation: "generating a P-256 key") }
        return OpenSSLPrivateKey(taking: key)
    }

    /// A new ECDSA P-256 key for minted leaves: the same key as `generateP256()` makes, held so that putting it in
    /// a certificate costs a few thousand instructions instead of OpenSSL 3.0's encoder and decoder round trip
    /// (about 2.2 M, a third of the proxy's CPU for a first connection to a new name). Signing with it is the same.
    public static func generateP256ForLeaves() throws(OpenSSLError) -> OpenSSLPrivateKey {
        OpenSSLError.clearQueue()
        guard let key = CSSL_legacy_EC_P256_generate() else { throw .drain(operation: "generating a P-256 key") }
        return OpenSSLPrivateKey(taking: key)
    }

    /// The key as unencrypted PKCS #8 PEM (`-----BEGIN PRIVATE KEY-----`). Handle as a secret.
    public func pemBytes() throws(OpenSSLError) -> [UInt8] {
        OpenSSLError.clearQueue()
        guard let bio = BIO_new(BIO_s_mem()) else { throw .drain(operation: "allocating a buffer") }
        defer { BIO_free(bio) }
        guard PEM_write_bio_PrivateKey(bio, pointer, nil, nil, 0, nil, nil) == 1 else {
            throw .drain(operation: "encoding the private key")
        }
        return OpenSSLCertificate.drainBIO(bio)
    }

    /// The key's algorithm as OpenSSL names it (`EC`, `RSA`, `ED25519`).
    public var algorithm: String {
        guard let name = EVP_PKEY_get0_type_name(pointer) else { return "unknown" }
        return String(cString: name)
    }
}

extension OpenSSLCertificate {
    /// The certificate as PEM text.
    public func pemBytes() throws(OpenSSLError) -> [UInt8] {
        OpenSSLError.clearQueue()
        guard let bio = BIO_new(BIO_s_mem()) else { throw .drain(operation: "allocating a buffer") }
        defer { BIO_free(bio) }
        guard PEM_write_bio_X509(bio, pointer) == 1 else { throw .drain(operation: "encoding the certificate") }
        return Self.drainBIO(bio)
    }

    static func drainBIO(_ bio: OpaquePointer) -> [UInt8] {
        var data: UnsafeMutablePointer<CChar>? = nil
        let length = BIO_ctrl(bio, BIO_CTRL_INFO, 0, &data)
        guard let data, length > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: data, count: Int(length)))
    }
}

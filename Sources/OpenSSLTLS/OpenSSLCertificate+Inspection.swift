internal import CSSL

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What a certificate says about itself, as OpenSSL parses it: enough to check that a customer's CA can
/// sign leaves that strict clients accept.
extension OpenSSLCertificate {
    /// `basicConstraints` as present: `nil` when the extension is absent.
    public struct BasicConstraints: Sendable, Hashable {
        public var isCA: Bool
        public var isCritical: Bool
    }

    public var basicConstraints: BasicConstraints? {
        let flags = X509_get_extension_flags(pointer)
        guard flags & UInt32(EXFLAG_BCONS) != 0 else { return nil }
        return BasicConstraints(isCA: flags & UInt32(EXFLAG_CA) != 0, isCritical: flags & UInt32(EXFLAG_BCONS_CRITICAL) != 0)
    }

    /// `keyUsage` allows signing certificates (`true` also when the extension is absent: any use).
    public var keyUsageAllowsCertificateSigning: Bool {
        let usage = X509_get_key_usage(pointer)
        return usage == UInt32.max || usage & UInt32(KU_KEY_CERT_SIGN) != 0
    }

    public var hasKeyUsage: Bool { X509_get_key_usage(pointer) != UInt32.max }

    /// `extendedKeyUsage` is absent, or allows serverAuth (or anyExtendedKeyUsage).
    public var extendedKeyUsageAllowsServerAuth: Bool {
        let usage = X509_get_extended_key_usage(pointer)
        return usage == UInt32.max || usage & UInt32(XKU_SSL_SERVER | XKU_ANYEKU) != 0
    }

    /// The `subjectKeyIdentifier` bytes, if the extension is present.
    public var subjectKeyIdentifier: [UInt8]? {
        guard let identifier = X509_get0_subject_key_id(pointer) else { return nil }
        return Self.bytes(of: identifier)
    }

    /// The `authorityKeyIdentifier`'s keyIdentifier bytes, if present.
    public var authorityKeyIdentifier: [UInt8]? {
        guard let identifier = X509_get0_authority_key_id(pointer) else { return nil }
        return Self.bytes(of: identifier)
    }

    /// Seconds since 1970 (UTC).
    public var notBefore: Int64 { Self.seconds(X509_get0_notBefore(pointer)) }
    public var notAfter: Int64 { Self.seconds(X509_get0_notAfter(pointer)) }

    /// The subject as one line (`CN=Example CA, O=Example`), for messages.
    public var subjectDescription: String { Self.describe(X509_get_subject_name(pointer)) }
    public var issuerDescription: String { Self.describe(X509_get_issuer_name(pointer)) }

    /// The DER encoding of the subject and issuer names, byte for byte.
    public var subjectDER: [UInt8] { Self.der(of: X509_get_subject_name(pointer)) }
    public var issuerDER: [UInt8] { Self.der(of: X509_get_issuer_name(pointer)) }

    /// The serial number's bytes (big-endian, without sign padding).
    public var serialNumber: [UInt8] {
        guard let serial = X509_get0_serialNumber(pointer) else { return [] }
        return Self.bytes(of: serial)
    }

    /// The certificate's `subjectAltName` entries, as `DNS:name` / `IP:address` strings (others omitted),
    /// and whether the extension is critical.
    public var subjectAlternativeNames: (names: [String], critical: Bool) {
        var critical: Int32 = 0
        guard let raw = X509_get_ext_d2i(pointer, NID_subject_alt_name, &critical, nil) else { return ([], false) }
        let names = OpaquePointer(raw)
        defer { GENERAL_NAMES_free(names) }
        var result: [String] = []
        for index in 0..<OPENSSL_sk_num(names) {
            guard let entry = OPENSSL_sk_value(names, index)?.assumingMemoryBound(to: GENERAL_NAME.self) else { continue }
            switch entry.pointee.type {
            case GEN_DNS:
                result.append("DNS:" + String(decoding: Self.bytes(of: entry.pointee.d.dNSName), as: UTF8.self))
            case GEN_IPADD:
                let bytes = Self.bytes(of: entry.pointee.d.iPAddress)
                result.append("IP:" + Self.formatIP(bytes))
            default:
                continue
            }
        }
        return (result, critical == 1)
    }

    /// Whether the certificate carries `nameConstraints`.
    public var hasNameConstraints: Bool {
        X509_get_ext_by_NID(pointer, NID_name_constraints, -1) >= 0
    }

    /// Whether an extension is present and critical (`NID_…` values are internal; the names are public).
    func isCritical(nid: Int32) -> Bool? {
        let index = X509_get_ext_by_NID(pointer, nid, -1)
        guard index >= 0, let extensionPointer = X509_get_ext(pointer, index) else { return nil }
        return X509_EXTENSION_get_critical(extensionPointer) == 1
    }

    public var keyUsageIsCritical: Bool? { isCritical(nid: NID_key_usage) }
    public var extendedKeyUsageIsServerAuthOnly: Bool {
        X509_get_extended_key_usage(pointer) == UInt32(XKU_SSL_SERVER)
    }
    public var hasSubjectKeyIdentifierExtension: Bool { isCritical(nid: NID_subject_key_identifier) != nil }
    public var signatureAlgorithm: String {
        String(cString: OBJ_nid2ln(X509_get_signature_nid(pointer)))
    }

    /// The public key's strength as OpenSSL's security level rates it (RSA 2048: 112 bits, ECDSA P-256: 128); 0 when
    /// it cannot be read.
    public var publicKeySecurityBits: Int {
        guard let key = X509_get0_pubkey(pointer) else { return 0 }
        return Int(EVP_PKEY_get_security_bits(key))
    }

    /// The public key for messages: `RSA 1024-bit`, `EC 256-bit`.
    public var publicKeyDescription: String {
        guard let key = X509_get0_pubkey(pointer) else { return "unreadable" }
        let type = EVP_PKEY_get0_type_name(key).map { String(cString: $0) } ?? "unknown"
        return "\(type) \(EVP_PKEY_get_bits(key))-bit"
    }

    /// The strength of the signature on the certificate (its digest and the signer's key type), as OpenSSL's
    /// security level rates it; nil when OpenSSL cannot tell.
    public var signatureSecurityBits: Int? {
        var bits: Int32 = 0
        guard X509_get_signature_info(pointer, nil, nil, &bits, nil) == 1 else { return nil }
        return Int(bits)
    }

    /// Issuer and subject are the same, as OpenSSL judges it (the name, and the key identifiers when present): a root.
    public var isSelfSigned: Bool {
        X509_get_extension_flags(pointer) & UInt32(EXFLAG_SS) != 0
    }

    /// Whether this certificate issued `subject`: it is named as the subject's issuer (key identifiers agreeing when
    /// present) and its key verifies the subject's signature.
    public func issued(_ subject: OpenSSLCertificate) -> Bool {
        OpenSSLError.clearQueue()
        defer { OpenSSLError.clearQueue() }
        guard X509_check_issued(pointer, subject.pointer) == X509_V_OK, let key = X509_get0_pubkey(pointer) else {
            return false
        }
        return X509_verify(subject.pointer, key) == 1
    }

    // MARK: helpers

    static func bytes(of string: UnsafePointer<ASN1_STRING>?) -> [UInt8] {
        guard let string, let data = ASN1_STRING_get0_data(string) else { return [] }
        return Array(UnsafeBufferPointer(start: data, count: Int(ASN1_STRING_length(string))))
    }

    static func seconds(_ time: UnsafePointer<ASN1_TIME>?) -> Int64 {
        guard let time else { return 0 }
        var parts = tm()
        guard ASN1_TIME_to_tm(time, &parts) == 1 else { return 0 }
        return Int64(timegm(&parts))
    }

    /// The earliest notAfter of the certificates in a `STACK_OF(X509)`; nil when it has none or a date cannot be
    /// read.
    static func earliestNotAfter(of stack: OpaquePointer) -> Int64? {
        var earliest: Int64? = nil
        for index in 0..<OPENSSL_sk_num(stack) {
            guard let certificate = OPENSSL_sk_value(stack, index) else { return nil }
            let end = seconds(X509_get0_notAfter(OpaquePointer(certificate)))
            guard end > 0 else { return nil }
            earliest = min(earliest ?? end, end)
        }
        return earliest
    }

    static func describe(_ name: OpaquePointer?) -> String {
        guard let name, let bio = BIO_new(BIO_s_mem()) else { return "" }
        defer { BIO_free(bio) }
        // RFC 2253 order reversed to read naturally; UTF-8 kept.
        _ = X509_NAME_print_ex(bio, name, 0, CSSL_XN_FLAG_ONELINE_UTF8())
        var pointer: UnsafeMutablePointer<CChar>? = nil
        let length = BIO_ctrl(bio, BIO_CTRL_INFO, 0, &pointer)
        guard let pointer, length > 0 else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: Int(length)), as: UTF8.self)
    }

    static func der(of name: OpaquePointer?) -> [UInt8] {
        guard let name else { return [] }
        var data: UnsafePointer<UInt8>? = nil
        var length = 0
        guard X509_NAME_get0_der(name, &data, &length) == 1, let data else { return [] }
        return Array(UnsafeBufferPointer(start: data, count: length))
    }

    static func formatIP(_ bytes: [UInt8]) -> String {
        var text = [CChar](repeating: 0, count: 64)
        let family = bytes.count == 4 ? AF_INET : AF_INET6
        guard bytes.count == 4 || bytes.count == 16 else { return "" }
        _ = bytes.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &text, socklen_t(text.count)) }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

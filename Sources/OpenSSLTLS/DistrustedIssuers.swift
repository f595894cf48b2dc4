internal import CSSL

/// Certificates a client context never takes as an issuer when it verifies a server, even when a trust store it
/// reads holds them: the inspection CA, whose key mints the leaves the proxy shows its clients. A trust store can
/// hold it by mistake (`SSL_CERT_FILE` set to the bundle `ca doctor --write-bundle` writes for the agent's clients, or
/// the CA put in `KAIZEN_UPSTREAM_CA_FILE` or `KAIZEN_API_CA_FILE`); a chain to it (an upstream's, the control
/// plane's) would then pass as verified.
///
/// A certificate is matched by its subject and public key, so a re-issued copy of the same CA (other dates, another
/// serial) is caught too. The store's two lookups of trusted certificates (`X509_STORE_set_get_issuer`,
/// `X509_STORE_set_lookup_certs`) go through filters that leave such certificates out, wherever the store found
/// them (a file, a hashed directory loaded on demand): verification then fails as for any root the store lacks
/// (`unable to get local issuer certificate`, or `self-signed certificate in certificate chain` when the server sent
/// the root itself), and the connection's error adds that the issuer is the inspection CA (`issuerReason`).
final class DistrustedIssuers {
    private let certificates: [OpenSSLCertificate]

    init(_ certificates: [OpenSSLCertificate]) {
        self.certificates = certificates
    }

    /// Whether `certificate` has the subject and public key of one of the distrusted certificates.
    func contains(_ certificate: OpaquePointer) -> Bool {
        certificates.contains { $0.hasSameSubjectAndKey(as: certificate) }
    }

    /// The ex_data slot of an `X509_STORE` that points to its filter (the lookups are plain C functions).
    private static let exDataIndex: Int32 = CSSL_X509_STORE_get_ex_new_index()

    /// Makes `store`'s lookups leave these certificates out. The store keeps an unretained pointer: the context that
    /// owns the store holds this object for as long as the store lives.
    func install(on store: OpaquePointer) {
        X509_STORE_set_ex_data(store, Self.exDataIndex, Unmanaged.passUnretained(self).toOpaque())
        X509_STORE_set_get_issuer(store, distrustingGetIssuer)
        X509_STORE_set_lookup_certs(store, distrustingLookupCerts)
    }

    /// Whether the chain X509_verify_cert built holds none of these certificates, at any depth. The store's lookups
    /// never return them, but a server can send one itself as an intermediate: the inspection CA when it is a
    /// sub-CA of a root the store trusts (an organisation's), or a cross-signed copy. When it does, the verification
    /// fails with `X509_V_ERR_APPLICATION_VERIFICATION` at that certificate (`rejectionReason` says why).
    func allows(_ storeContext: OpaquePointer) -> Bool {
        guard let chain = X509_STORE_CTX_get0_chain(storeContext) else { return true }
        for depth in 0..<OPENSSL_sk_num(chain) {
            guard let raw = OPENSSL_sk_value(chain, depth) else { continue }
            let certificate = OpaquePointer(raw)
            if contains(certificate) {
                X509_STORE_CTX_set_error(storeContext, X509_V_ERR_APPLICATION_VERIFICATION)
                X509_STORE_CTX_set_error_depth(storeContext, depth)
                X509_STORE_CTX_set_current_cert(storeContext, certificate)
                return false
            }
        }
        return true
    }

    /// The reason a connection's verification result `X509_V_ERR_APPLICATION_VERIFICATION` gives (only `allows`
    /// sets it).
    static let rejectionReason =
        "the chain includes the inspection CA (KAIZEN_CA_CERT), which the proxy never trusts for its own connections"

    /// What a verification result that found no trusted issuer adds when a distrusted certificate issued one of the
    /// server's certificates (`issuedAny`): the store had left it out, and plain `unable to get local issuer
    /// certificate` would not say why a chain to a CA the store holds failed.
    static let issuerReason =
        "its issuer is the inspection CA (KAIZEN_CA_CERT), which the proxy never trusts for its own connections"

    /// The verification results of a chain that reached no trusted issuer.
    static let missingIssuerResults: Set<Int> = [
        Int(X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT), Int(X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY),
        Int(X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE), Int(X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN),
    ]

    /// Whether one of these certificates issued a certificate of `chain` (the server's, as sent), by name and key
    /// identifier (`X509_check_issued`).
    func issuedAny(of chain: OpaquePointer) -> Bool {
        (0..<OPENSSL_sk_num(chain)).contains { index in
            guard let raw = OPENSSL_sk_value(chain, index) else { return false }
            return certificates.contains { X509_check_issued($0.pointer, OpaquePointer(raw)) == X509_V_OK }
        }
    }

    static func of(_ storeContext: OpaquePointer) -> DistrustedIssuers? {
        guard let store = X509_STORE_CTX_get0_store(storeContext) else { return nil }
        return of(store: store)
    }

    /// The filter installed on `store`, if any.
    static func of(store: OpaquePointer) -> DistrustedIssuers? {
        guard let pointer = X509_STORE_get_ex_data(store, exDataIndex) else { return nil }
        return Unmanaged<DistrustedIssuers>.fromOpaque(pointer).takeUnretainedValue()
    }
}

extension OpenSSLCertificate {
    /// Whether `other` has this certificate's subject and public key (the same CA, re-issued or not).
    func hasSameSubjectAndKey(as other: OpaquePointer) -> Bool {
        guard X509_NAME_cmp(X509_get_subject_name(pointer), X509_get_subject_name(other)) == 0,
            let key = X509_get0_pubkey(pointer), let otherKey = X509_get0_pubkey(other)
        else { return false }
        return EVP_PKEY_eq(key, otherKey) == 1
    }

    /// Whether `other` has this certificate's subject and public key (the same CA, re-issued or not).
    public func hasSameSubjectAndKey(as other: OpenSSLCertificate) -> Bool {
        hasSameSubjectAndKey(as: other.pointer)
    }
}

/// The store's issuer lookup (`X509_STORE_CTX_get1_issuer`), less the distrusted certificates: when it finds one,
/// another trusted certificate of that name that issued `subject` is looked for (a CA with the same name and
/// another key), else none is found.
private func distrustingGetIssuer(
    _ issuer: UnsafeMutablePointer<OpaquePointer?>?, _ storeContext: OpaquePointer?, _ subject: OpaquePointer?
) -> Int32 {
    guard let issuer, let storeContext, let subject else { return -1 }
    var found: OpaquePointer? = nil
    let result = X509_STORE_CTX_get1_issuer(&found, storeContext, subject)
    guard result == 1, let candidate = found, let distrusted = DistrustedIssuers.of(storeContext),
        distrusted.contains(candidate)
    else {
        issuer.pointee = found
        return result
    }
    X509_free(candidate)
    guard let others = distrustingLookupCerts(storeContext, X509_get_issuer_name(subject)) else { return 0 }
    defer { CSSL_sk_X509_pop_free(others) }
    for index in 0..<OPENSSL_sk_num(others) {
        guard let raw = OPENSSL_sk_value(others, index) else { continue }
        let other = OpaquePointer(raw)
        if X509_check_issued(other, subject) == X509_V_OK {
            X509_up_ref(other)
            issuer.pointee = other
            return 1
        }
    }
    return 0
}

/// The store's lookup of trusted certificates by subject (`X509_STORE_CTX_get1_certs`), less the distrusted ones.
private func distrustingLookupCerts(_ storeContext: OpaquePointer?, _ name: OpaquePointer?) -> OpaquePointer? {
    guard let storeContext, let stack = X509_STORE_CTX_get1_certs(storeContext, name) else { return nil }
    guard let distrusted = DistrustedIssuers.of(storeContext) else { return stack }
    var index = OPENSSL_sk_num(stack) - 1
    while index >= 0 {
        if let raw = OPENSSL_sk_value(stack, index), distrusted.contains(OpaquePointer(raw)) {
            OPENSSL_sk_delete(stack, index)
            X509_free(OpaquePointer(raw))
        }
        index -= 1
    }
    guard OPENSSL_sk_num(stack) > 0 else {
        OPENSSL_sk_free(stack)
        return nil
    }
    return stack
}

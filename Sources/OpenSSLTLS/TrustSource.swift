internal import CSSL

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A place a client context takes trusted certificates from: OpenSSL's default store (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` when set in the process's environment, else the system's file and directory) or the bundle given
/// besides it.
public enum TrustSource: Sendable, Hashable {
    /// The default store's file; `variable` is the environment variable that named it (`SSL_CERT_FILE`), nil for
    /// the system's own.
    case defaultFile(path: String, variable: String?)
    /// The default store's directories (a list, as OpenSSL reads it); `variable` as above (`SSL_CERT_DIR`).
    case defaultDirectory(path: String, variable: String?)
    /// `Configuration.additionalTrustFile`.
    case additionalFile(path: String)

    /// The places `configuration` (a client's) trusts, as `SSL_CTX_set_default_verify_paths` and
    /// `SSL_CTX_load_verify_locations` read them.
    public static func sources(of configuration: OpenSSLContext.Configuration) -> [TrustSource] {
        var sources: [TrustSource] = []
        if configuration.trustSystemStore {
            let fileVariable = String(cString: X509_get_default_cert_file_env())
            if let value = getenv(fileVariable) {
                sources.append(.defaultFile(path: String(cString: value), variable: fileVariable))
            } else {
                sources.append(.defaultFile(path: String(cString: X509_get_default_cert_file()), variable: nil))
            }
            let directoryVariable = String(cString: X509_get_default_cert_dir_env())
            if let value = getenv(directoryVariable) {
                sources.append(.defaultDirectory(path: String(cString: value), variable: directoryVariable))
            } else {
                sources.append(.defaultDirectory(path: String(cString: X509_get_default_cert_dir()), variable: nil))
            }
        }
        if let file = configuration.additionalTrustFile { sources.append(.additionalFile(path: file)) }
        return sources
    }

    /// Whether this place holds a certificate with the subject and public key of `certificate`, found as OpenSSL
    /// finds trusted certificates there (a file's certificates; a hashed directory's by the subject's hash).
    public func holds(sameSubjectAndKeyAs certificate: OpenSSLCertificate) -> Bool {
        guard let store = X509_STORE_new() else { return false }
        defer { X509_STORE_free(store) }
        OpenSSLError.clearQueue()
        let loaded: Int32
        switch self {
        case .defaultFile(let path, _), .additionalFile(let path): loaded = X509_STORE_load_file(store, path)
        case .defaultDirectory(let path, _): loaded = X509_STORE_load_path(store, path)
        }
        // A file that is missing or unreadable holds nothing (the context's own loading says so, when it matters).
        guard loaded == 1, let lookup = X509_STORE_CTX_new() else {
            OpenSSLError.clearQueue()
            return false
        }
        defer { X509_STORE_CTX_free(lookup) }
        guard X509_STORE_CTX_init(lookup, store, nil, nil) == 1,
            let found = X509_STORE_CTX_get1_certs(lookup, X509_get_subject_name(certificate.pointer))
        else {
            OpenSSLError.clearQueue()
            return false
        }
        defer { CSSL_sk_X509_pop_free(found) }
        return (0..<OPENSSL_sk_num(found)).contains { index in
            OPENSSL_sk_value(found, index).map { certificate.hasSameSubjectAndKey(as: OpaquePointer($0)) } ?? false
        }
    }
}

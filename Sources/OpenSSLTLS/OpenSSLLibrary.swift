internal import CSSL

/// Facts about the system OpenSSL this binary runs with (from libssl-dev at build time, libssl3 at run time).
public enum OpenSSLLibrary {
    /// `OpenSSL 3.0.19 27 Jan 2026`, as the library reports itself.
    public static var version: String {
        String(cString: OpenSSL_version(OPENSSL_VERSION))
    }

    /// The library's version number (0xMNN00PP0L), for checks such as "at least 3.0".
    public static var versionNumber: UInt {
        UInt(OpenSSL_version_num())
    }

    /// Checks that `pem` holds at least one well-formed PEM certificate, using OpenSSL's own parser;
    /// the error carries OpenSSL's reasons. (The TLS layer's certificate owner builds on this.)
    public static func validateCertificatePEM(_ pem: String) throws(OpenSSLError) {
        OpenSSLError.clearQueue()
        let bytes = Array(pem.utf8)
        let parsed: Bool = bytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return false }
            defer { BIO_free(bio) }
            guard let certificate = PEM_read_bio_X509(bio, nil, nil, nil) else { return false }
            X509_free(certificate)
            return true
        }
        guard parsed else { throw OpenSSLError.drain(operation: "reading a PEM certificate") }
    }
}

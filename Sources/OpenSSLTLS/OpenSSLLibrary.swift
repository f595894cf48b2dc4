internal import CSSL
internal import CSSLClientContext

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

    /// OpenSSL's own default file of trusted CAs, as built (`/usr/lib/ssl/cert.pem` on Debian, a link to
    /// `/etc/ssl/certs/ca-certificates.crt`): the system store, whatever `SSL_CERT_FILE` says.
    public static var defaultCertificateFile: String {
        String(cString: X509_get_default_cert_file())
    }

    /// The decoders of the TLS clients' library context, and of OpenSSL's default provider (0 and 0 when the clients
    /// use the default context).
    public static var clientLibraryContextDecoders: (kept: Int, all: Int) {
        var kept: Int32 = 0
        var all: Int32 = 0
        kaizen_client_library_context_decoders(&kept, &all)
        return (Int(kept), Int(all))
    }
}

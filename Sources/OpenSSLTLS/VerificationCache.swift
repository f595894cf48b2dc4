internal import CSSL
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// Chains a client context verified recently, so that a server presenting the same chain again is not put through
/// X509_verify_cert again until the entry expires: building the chain and checking its signatures is about a
/// tenth of the CPU of a new inspected connection, and an agent opens many connections to the same few
/// destinations (and a CDN serves many names with one certificate). Chrome's certificate verifier keeps such a
/// cache too.
///
/// Only successes are kept. The key is the SHA-256 of each certificate the server sent, in order (DER), and of
/// the verification flags, depth and security (auth) level. The name or address the connection asked for is
/// checked against the leaf on every connection, as X509_verify_cert's own last step does (`check_id`:
/// `X509_check_host` with the same host flags; the address with `X509_check_ip_asc`); when it does not match, the
/// chain is verified in full, which fails with OpenSSL's own error. The server still proves on every handshake that
/// it holds the leaf's key (its CertificateVerify is checked by the handshake, not here).
///
/// What else X509_verify_cert depends on is fixed for the context's life, as the contexts of this module are built:
/// the trust store (a reload builds a new context, with a new cache), the purpose and trust (libssl's
/// "ssl_server" for every connection), no policies, no DANE, no Certificate Transparency, no verify callback; and
/// the time, which the entry's expiry covers: never later than the earliest notAfter in the verified chain, never
/// more than `lifetime` after the verification. A connection that asks for an email check is verified in full. On
/// a hit, libssl keeps no verified chain and no peer name for the connection (`SSL_get0_verified_chain`,
/// `SSL_get0_peername` are nil); nothing here reads them, and Certificate Transparency, which would, is off.
final class VerificationCache: Sendable {
    struct Key: Hashable, Sendable {
        let digest: [UInt8]
    }

    private struct State {
        var expiries: [Key: Int64] = [:]
        /// No entry expires before this (Unix seconds): a full cache has nothing to drop until then.
        var earliestExpiry = Int64.max
        var hits = 0
    }

    /// Entries kept at most; when full, expired entries make room, and without any a new chain is not kept.
    let capacity: Int
    /// Seconds an entry is trusted after its verification, at most.
    let lifetime: Int64
    private let state = NIOLockedValueBox(State())

    /// The time (Unix seconds); tests set it.
    private let clock: @Sendable () -> Int64

    init(capacity: Int = 1024, lifetime: Int64 = 600, clock: @escaping @Sendable () -> Int64 = { Int64(time(nil)) }) {
        self.capacity = capacity
        self.lifetime = lifetime
        self.clock = clock
    }

    /// Each entry's expiry (for tests).
    var expiries: [Int64] { state.withLockedValue { Array($0.expiries.values) } }

    /// Connections whose chain was taken from the cache.
    var hits: Int { state.withLockedValue { $0.hits } }
    var count: Int { state.withLockedValue { $0.expiries.count } }

    /// Whether `key` was verified and has not expired at `now` (Unix seconds).
    func contains(_ key: Key, now: Int64) -> Bool {
        state.withLockedValue { state in
            guard let expiry = state.expiries[key] else { return false }
            guard now < expiry else {
                state.expiries[key] = nil
                return false
            }
            return true
        }
    }

    /// Keeps `key`, verified at `now`, until `lifetime` later or `notAfter` (the chain's earliest), whichever is first.
    func remember(_ key: Key, notAfter: Int64, now: Int64) {
        let expiry = min(now + lifetime, notAfter)
        guard expiry > now, capacity > 0 else { return }
        state.withLockedValue { state in
            if state.expiries[key] == nil && state.expiries.count >= capacity {
                // Full: only expired entries make room (a scan at most once per expiry, not per chain).
                guard now >= state.earliestExpiry else { return }
                state.expiries = state.expiries.filter { $0.value > now }
                state.earliestExpiry = state.expiries.values.min() ?? Int64.max
                guard state.expiries.count < capacity else { return }
            }
            state.expiries[key] = expiry
            state.earliestExpiry = min(state.earliestExpiry, expiry)
        }
    }

    /// The verification OpenSSL runs for each server certificate chain (`SSL_CTX_set_cert_verify_callback`):
    /// X509_verify_cert, unless the same chain passed it for the same name recently; then, when the context distrusts
    /// issuers, the chain it built must hold none of them (`DistrustedIssuers.allows`). A cache of capacity 0 keeps
    /// nothing (and digests nothing) and only does that.
    func verify(_ storeContext: OpaquePointer) -> Int32 {
        let key = capacity > 0 ? Self.key(storeContext) : nil
        let now = clock()
        if let key, contains(key, now: now), Self.leafMatchesName(storeContext) {
            state.withLockedValue { $0.hits += 1 }
            X509_STORE_CTX_set_error(storeContext, X509_V_OK)
            return 1
        }
        var result = X509_verify_cert(storeContext)
        if result == 1, let distrusted = DistrustedIssuers.of(storeContext), !distrusted.allows(storeContext) {
            result = 0
        }
        // A chain with a date that cannot be read is not kept.
        guard result == 1, let key, let chain = X509_STORE_CTX_get0_chain(storeContext),
            let notAfter = OpenSSLCertificate.earliestNotAfter(of: chain)
        else { return result }
        remember(key, notAfter: notAfter, now: now)
        return result
    }

    /// X509_verify_cert's name check (`check_id`), for a chain whose other checks passed: the leaf carries one of
    /// the names the connection verifies (if it set any) and the address (if it set one).
    static func leafMatchesName(_ storeContext: OpaquePointer) -> Bool {
        guard let leaf = X509_STORE_CTX_get0_cert(storeContext),
            let parameters = X509_STORE_CTX_get0_param(storeContext)
        else { return false }
        let flags = X509_VERIFY_PARAM_get_hostflags(parameters)
        var hostMatches: Bool? = nil
        for index in Int32(0)..<16 {
            guard let host = X509_VERIFY_PARAM_get0_host(parameters, index) else { break }
            if X509_check_host(leaf, host, 0, flags, nil) == 1 {
                hostMatches = true
                break
            }
            hostMatches = false
        }
        guard hostMatches != false else { return false }
        guard let address = X509_VERIFY_PARAM_get1_ip_asc(parameters) else { return true }
        defer { CRYPTO_free(address, nil, 0) }
        return X509_check_ip_asc(leaf, address, 0) == 1
    }

    /// The digest of the server's certificates (DER, each behind its length) and of how they are verified (not
    /// the name: `leafMatchesName` checks it each time); nil when a certificate cannot be encoded (then the chain
    /// is verified as usual).
    static func key(_ storeContext: OpaquePointer) -> Key? {
        guard let untrusted = X509_STORE_CTX_get0_untrusted(storeContext),
            let parameters = X509_STORE_CTX_get0_param(storeContext),
            X509_VERIFY_PARAM_get0_email(parameters) == nil
        else { return nil }
        var input: [UInt8] = []
        input.reserveCapacity(4096)
        func append(_ value: UInt64) {
            for shift in stride(from: 56, through: 0, by: -8) { input.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
        }
        append(UInt64(X509_VERIFY_PARAM_get_flags(parameters)))
        append(UInt64(bitPattern: Int64(X509_VERIFY_PARAM_get_depth(parameters))))
        append(UInt64(bitPattern: Int64(X509_VERIFY_PARAM_get_auth_level(parameters))))
        let count = OPENSSL_sk_num(untrusted)
        append(UInt64(count))
        for index in 0..<count {
            guard let certificate = OPENSSL_sk_value(untrusted, index) else { return nil }
            var der: UnsafeMutablePointer<UInt8>? = nil
            let length = i2d_X509(OpaquePointer(certificate), &der)
            guard length > 0, let der else { return nil }
            append(UInt64(length))
            input.append(contentsOf: UnsafeBufferPointer(start: der, count: Int(length)))
            CRYPTO_free(der, nil, 0)
        }
        return Key(digest: input.withUnsafeBytes { OpenSSLDigest.sha256($0) })
    }
}

/// `SSL_CTX_set_cert_verify_callback`'s function: the context's cache is its argument.
func verifyThroughCache(_ storeContext: OpaquePointer?, _ argument: UnsafeMutableRawPointer?) -> Int32 {
    guard let storeContext, let argument else { return 0 }
    return Unmanaged<VerificationCache>.fromOpaque(argument).takeUnretainedValue().verify(storeContext)
}

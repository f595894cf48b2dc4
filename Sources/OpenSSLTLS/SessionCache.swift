internal import CSSL
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// TLS sessions a client context's connections got from their servers (TLS 1.3 tickets, TLS 1.2 sessions), by the
/// destination they were made with, so that the next connection to the same destination resumes one instead of
/// a full handshake: no certificate to parse and verify (two thirds of OpenSSL's work for a new inspected
/// connection), no signature from the server. The key exchange still runs (OpenSSL offers only `psk_dhe_ke`), so
/// each resumed connection has keys of its own.
///
/// A session was made by a handshake that verified the server for its connection's name, and is offered only to a
/// connection with the same key (the caller's: destination, name verified, ALPN offer). Each is used once (RFC 8446
/// §C.4: a ticket reused could link connections); the server sends fresh ones on the resumed connection. Kept for
/// the server's ticket lifetime hint, and never past the notAfter of the server's certificate nor `lifetime` after
/// the full handshake that verified the server: the sessions a resumed connection brings keep that handshake's
/// time, so resuming again and again does not stretch one verification (RFC 8446 §4.6.1).
///
/// Owns one reference to each `SSL_SESSION` it holds: freed when taken (the SSL it is set on holds its own), when
/// replaced or expired, and when the cache goes.
final class SessionCache: @unchecked Sendable {
    // @unchecked Sendable: the sessions are only reached under the lock; OpenSSL's SSL_SESSION reference counts
    // are thread-safe.
    private struct Entry {
        let session: OpaquePointer
        let expiry: Int64
        /// When the full handshake the session descends from verified the server.
        let verifiedAt: Int64
    }

    private struct State {
        /// Per key, oldest first.
        var entries: [String: [Entry]] = [:]
        var total = 0
        var resumptions = 0
    }

    /// Sessions kept at most, all keys together; when full, expired ones make room, and without any a new one is
    /// not kept.
    let capacity: Int
    /// Sessions kept per key at most (the oldest goes): enough for connections opened together, each of which
    /// needs one of its own (a server sends two or so per connection).
    let perKey: Int
    let lifetime: Int64
    private let state = NIOLockedValueBox(State())

    init(capacity: Int = 1024, perKey: Int = 8, lifetime: Int64 = 600) {
        self.capacity = capacity
        self.perKey = perKey
        self.lifetime = lifetime
    }

    deinit {
        state.withLockedValue { state in
            for entries in state.entries.values {
                for entry in entries { SSL_SESSION_free(entry.session) }
            }
            state.entries = [:]
            state.total = 0
        }
    }

    var count: Int { state.withLockedValue { $0.total } }
    /// Connections that resumed a session from here.
    var resumptions: Int { state.withLockedValue { $0.resumptions } }

    /// Keeps `session` (taking the caller's reference) for a next connection with `key`; `verifiedAt` is when
    /// the full handshake it descends from verified the server.
    func store(_ session: OpaquePointer, key: String, now: Int64, verifiedAt: Int64) {
        let hint = Int64(SSL_SESSION_get_ticket_lifetime_hint(session))
        var expiry = min(verifiedAt + lifetime, hint > 0 ? now + hint : Int64.max)
        // Never past the end of the certificate the server was verified with.
        if let peer = SSL_SESSION_get0_peer(session) {
            let notAfter = OpenSSLCertificate.seconds(X509_get0_notAfter(peer))
            if notAfter > 0 { expiry = min(expiry, notAfter) }
        }
        var released: [OpaquePointer] = []
        state.withLockedValue { state in
            var kept = state.entries[key] ?? []
            if kept.count >= perKey {
                released.append(kept.removeFirst().session)
                state.total -= 1
            } else if state.total >= capacity {
                // Full: expired sessions make room; without any, this one is not kept.
                for (otherKey, entries) in state.entries {
                    let (live, expired) = (entries.filter { $0.expiry > now }, entries.filter { $0.expiry <= now })
                    guard !expired.isEmpty else { continue }
                    released += expired.map(\.session)
                    state.total -= expired.count
                    state.entries[otherKey] = live.isEmpty ? nil : live
                }
                kept = (state.entries[key] ?? [])
                guard state.total < capacity else {
                    released.append(session)
                    return
                }
            }
            kept.append(Entry(session: session, expiry: expiry, verifiedAt: verifiedAt))
            state.entries[key] = kept
            state.total += 1
        }
        for session in released { SSL_SESSION_free(session) }
    }

    /// The newest session kept for `key`, removed (the caller frees it once set on its SSL), with when the server
    /// was verified; nil when there is none that has not expired.
    func take(_ key: String, now: Int64) -> (session: OpaquePointer, verifiedAt: Int64)? {
        var released: [OpaquePointer] = []
        let found = state.withLockedValue { state -> Entry? in
            guard var kept = state.entries[key] else { return nil }
            var found: Entry? = nil
            while let newest = kept.popLast() {
                state.total -= 1
                if now < newest.expiry {
                    found = newest
                    break
                }
                released.append(newest.session)
            }
            state.entries[key] = kept.isEmpty ? nil : kept
            return found
        }
        for session in released { SSL_SESSION_free(session) }
        return found.map { ($0.session, $0.verifiedAt) }
    }

    /// When the server of the newest session kept for `key` was verified (for tests).
    func verifiedAt(_ key: String) -> Int64? { state.withLockedValue { $0.entries[key]?.last?.verifiedAt } }

    func noteResumption() { state.withLockedValue { $0.resumptions += 1 } }
}

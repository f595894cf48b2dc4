internal import CSSL
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// TLS 1.3 sessions (tickets) a client context's connections got from their servers, by the destination they were
/// made with, so that the next connection to the same destination resumes one instead of a full handshake: no
/// certificate to parse and verify (two thirds of OpenSSL's work for a new inspected connection), no signature
/// from the server. The key exchange still runs (OpenSSL offers only `psk_dhe_ke`), so each resumed connection has
/// keys of its own. TLS 1.2 sessions are not kept: their resumption has no key exchange, and keeping one would keep
/// the master secret of a finished connection in memory.
///
/// A session was made by a handshake that verified the server for its connection's name, and is offered only to a
/// connection with the same key (`OpenSSLConnection` puts the verified name in it; the caller adds the
/// destination). Each is used once (RFC 8446 §C.4: a ticket reused could link connections); the server sends fresh
/// ones on the resumed connection. Kept for the server's ticket lifetime (a lifetime of 0: not kept), and never
/// past the earliest notAfter of the certificates the server sent nor `lifetime` after the full handshake that
/// authenticated the server: the sessions a resumed connection brings, and tickets that arrive late, keep that
/// handshake's time, so one authentication is not stretched (RFC 8446 §4.6.1).
///
/// Owns one reference to each `SSL_SESSION` it holds: freed when taken (the SSL it is set on holds its own), when
/// replaced or expired, and when the cache goes.
final class SessionCache: @unchecked Sendable {
    // @unchecked Sendable: the sessions are only reached under the lock; OpenSSL's SSL_SESSION reference counts
    // are thread-safe.
    private struct Entry {
        let session: OpaquePointer
        let expiry: Int64
        let authentication: Authentication
    }

    /// When the full handshake a session descends from authenticated the server, and the earliest notAfter of the
    /// certificates it sent.
    struct Authentication: Equatable, Sendable {
        var at: Int64
        var notAfter: Int64
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
    /// The time (Unix seconds); tests set it.
    let clock: @Sendable () -> Int64
    private let state = NIOLockedValueBox(State())

    init(
        capacity: Int = 1024, perKey: Int = 8, lifetime: Int64 = 600,
        clock: @escaping @Sendable () -> Int64 = { Int64(time(nil)) }
    ) {
        self.capacity = capacity
        self.perKey = perKey
        self.lifetime = lifetime
        self.clock = clock
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

    /// Keeps `session` (taking the caller's reference) for a next connection with `key`; `authentication` is that
    /// of the full handshake it descends from. A TLS 1.3 ticket with a lifetime of 0 is freed at once.
    func store(_ session: OpaquePointer, key: String, now: Int64, authentication: Authentication) {
        let hint = Int64(SSL_SESSION_get_ticket_lifetime_hint(session))
        let expiry = min(authentication.at + lifetime, now + hint, authentication.notAfter)
        guard expiry > now else {
            SSL_SESSION_free(session)
            return
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
            kept.append(Entry(session: session, expiry: expiry, authentication: authentication))
            state.entries[key] = kept
            state.total += 1
        }
        for session in released { SSL_SESSION_free(session) }
    }

    /// The newest session kept for `key`, removed (the caller frees it once set on its SSL), with the
    /// authentication it stands for; nil when there is none that has not expired.
    func take(_ key: String, now: Int64) -> (session: OpaquePointer, authentication: Authentication)? {
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
        return found.map { ($0.session, $0.authentication) }
    }

    /// The authentication the newest session kept for `key` stands for (for tests).
    func authentication(_ key: String) -> Authentication? {
        state.withLockedValue { $0.entries[key]?.last?.authentication }
    }

    func noteResumption() { state.withLockedValue { $0.resumptions += 1 } }
}

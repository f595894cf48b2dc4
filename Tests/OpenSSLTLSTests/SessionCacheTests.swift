import Foundation
@testable import OpenSSLTLS
import Testing

/// The session cache's bookkeeping, with real sessions from in-memory handshakes (resumption itself is tested in
/// InMemoryHandshakeTests and end to end in InspectionTests).
@Suite struct SessionCacheTests {
    let handshakes: InMemoryHandshakeTests
    let clientContext: OpenSSLContext
    let serverContext: OpenSSLContext

    init() throws {
        handshakes = try InMemoryHandshakeTests()
        clientContext = try handshakes.client()
        serverContext = try handshakes.server()
    }

    var now: Int64 { Int64(Date().timeIntervalSince1970) }

    /// A session from a new connection (the cache's own copy, now the caller's).
    func freshSession() throws -> OpaquePointer {
        #expect(try handshakes.resumes(clientContext, serverContext, key: "fresh") != nil)
        let cache = try #require(clientContext.sessionCache)
        return try #require(cache.take("localhost\nfresh", now: now)).session
    }

    @Test func eachSessionIsKeptUnderTheNameAndKeyAndTakenOnce() throws {
        #expect(try handshakes.resumes(clientContext, serverContext, key: "a") == false)
        let cache = try #require(clientContext.sessionCache)
        // The server sent two tickets: two sessions, for two connections.
        #expect(cache.count == 2)
        let first = try #require(cache.take("localhost\na", now: now))
        let second = try #require(cache.take("localhost\na", now: now))
        #expect(first.session != second.session)
        #expect(cache.take("localhost\na", now: now) == nil)
        #expect(cache.take("a", now: now) == nil)
        cache.store(first.session, key: "localhost\na", now: now, verifiedAt: first.verifiedAt)
        cache.store(second.session, key: "localhost\na", now: now, verifiedAt: second.verifiedAt)
        #expect(cache.count == 2)
    }

    @Test func theNewestSessionsAreKeptPerKey() throws {
        let cache = SessionCache(perKey: 2, lifetime: 600)
        for marker in Int64(1)...3 { cache.store(try freshSession(), key: "k", now: 0, verifiedAt: marker) }
        #expect(cache.count == 2)
        #expect(cache.take("k", now: 1)?.verifiedAt == 3)
        let second = try #require(cache.take("k", now: 1))
        #expect(second.verifiedAt == 2)
        #expect(cache.take("k", now: 1) == nil)
        cache.store(second.session, key: "k", now: 1, verifiedAt: 2)
    }

    @Test func aSessionIsNotTakenAfterItsLifetime() throws {
        #expect(try handshakes.resumes(clientContext, serverContext, key: "a") == false)
        let cache = try #require(clientContext.sessionCache)
        #expect(cache.take("localhost\na", now: now + 601) == nil)
        #expect(cache.count == 0)
    }

    @Test func sessionsFromResumedConnectionsKeepTheTimeOfTheVerification() throws {
        #expect(try handshakes.resumes(clientContext, serverContext, key: "a") == false)
        let cache = try #require(clientContext.sessionCache)
        let verified = try #require(cache.verifiedAt("localhost\na"))
        // The sessions are put back as if verified 590 s ago: the resumed connection's new sessions keep that time,
        // so they are gone 10 minutes after it, not after their own arrival.
        let first = try #require(cache.take("localhost\na", now: now))
        let second = try #require(cache.take("localhost\na", now: now))
        cache.store(first.session, key: "localhost\na", now: now, verifiedAt: verified - 590)
        cache.store(second.session, key: "localhost\na", now: now, verifiedAt: verified - 590)
        #expect(try handshakes.resumes(clientContext, serverContext, key: "a") == true)
        // One left, and the one the resumed connection brought.
        #expect(cache.count == 2)
        #expect(cache.verifiedAt("localhost\na") == verified - 590)
        #expect(cache.take("localhost\na", now: verified + 11) == nil)
        #expect(cache.count == 0)
    }

    @Test func whenFullOnlyExpiredSessionsMakeRoom() throws {
        let small = SessionCache(capacity: 1, lifetime: 600)
        small.store(try freshSession(), key: "x", now: 0, verifiedAt: 0)
        small.store(try freshSession(), key: "y", now: 0, verifiedAt: 0)
        #expect(small.count == 1)
        #expect(small.take("y", now: 1) == nil)
        // At 700 x has expired: it makes room for y.
        small.store(try freshSession(), key: "y", now: 700, verifiedAt: 700)
        #expect(small.count == 1)
        let y = try #require(small.take("y", now: 701))
        small.store(y.session, key: "y", now: 701, verifiedAt: y.verifiedAt)
    }
}

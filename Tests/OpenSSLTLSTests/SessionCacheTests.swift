import Foundation
import NIOConcurrencyHelpers
import NIOCore
@testable import OpenSSLTLS
import Testing

/// The session cache's bookkeeping, with real sessions from in-memory handshakes on a clock the test sets
/// (resumption itself is tested in InMemoryHandshakeTests and end to end in InspectionTests).
@Suite struct SessionCacheTests {
    let handshakes: InMemoryHandshakeTests
    let time = NIOLockedValueBox<Int64>(Int64(Date().timeIntervalSince1970))
    let clientContext: OpenSSLContext
    let serverContext: OpenSSLContext

    init() throws {
        handshakes = try InMemoryHandshakeTests()
        let time = self.time
        clientContext = try handshakes.client { $0.clock = { time.withLockedValue { $0 } } }
        serverContext = try handshakes.server()
    }

    var now: Int64 { time.withLockedValue { $0 } }
    func key(_ key: String, name: String = "localhost") -> String { "\(name.utf8.count):\(name)\(key)" }

    /// A session from a new connection (the cache's own copy, now the caller's).
    func freshSession() throws -> OpaquePointer {
        #expect(try handshakes.resumes(clientContext, serverContext, key: "fresh") != nil)
        let cache = try #require(clientContext.sessionCache)
        return try #require(cache.take(key("fresh"), now: now)).session
    }

    @Test func eachSessionIsKeptUnderTheNameAndKeyAndTakenOnce() throws {
        #expect(try handshakes.resumes(clientContext, serverContext, key: "a") == false)
        let cache = try #require(clientContext.sessionCache)
        // The server sent two tickets: two sessions, for two connections.
        #expect(cache.count == 2)
        let first = try #require(cache.take(key("a"), now: now))
        let second = try #require(cache.take(key("a"), now: now))
        #expect(first.session != second.session)
        #expect(cache.take(key("a"), now: now) == nil)
        #expect(cache.take("a", now: now) == nil)
        cache.store(first.session, key: key("a"), now: now, authentication: first.authentication)
        cache.store(second.session, key: key("a"), now: now, authentication: second.authentication)
        #expect(cache.count == 2)
    }

    @Test func aSessionStandsForTheHandshakeTimeAndTheEarliestNotAfterOfTheChainSent() throws {
        let handshakeTime = now
        let gamma = (handshakes.pki.leafChain("gamma.test"), handshakes.pki.leafKey("gamma.test"))
        var configuration = OpenSSLContext.Configuration(role: .server)
        configuration.certificateChainFile = gamma.0
        configuration.privateKeyFile = gamma.1
        let gammaServer = try OpenSSLContext(configuration: configuration)
        #expect(try handshakes.resumes(clientContext, gammaServer, name: "gamma.test", key: "g") == false)
        let cache = try #require(clientContext.sessionCache)
        let sent = try OpenSSLCertificate.chain(pem: Array(try Data(contentsOf: URL(fileURLWithPath: gamma.0))))
        #expect(sent.count == 2)
        #expect(cache.authentication(key("g", name: "gamma.test")) == .init(at: handshakeTime, notAfter: sent.map(\.notAfter).min()!))
        #expect(cache.take(key("g", name: "gamma.test"), now: handshakeTime + 600) == nil)
    }

    @Test func aTicketThatComesLateStandsForTheHandshakeNotItsArrival() throws {
        let handshakeTime = now
        let client = try OpenSSLConnection(context: clientContext, serverName: "localhost", sessionKey: "late")
        let server = try OpenSSLConnection(context: serverContext)
        #expect(handshakes.handshake(client, server).0 == .complete)
        time.withLockedValue { $0 += 300 }
        #expect(server.sendSessionTicket())
        try server.write(ByteBuffer(string: "x")).get()
        handshakes.pass(server, to: client)
        #expect(handshakes.readText(client) == "x")
        let cache = try #require(clientContext.sessionCache)
        #expect(cache.count == 3)
        #expect(cache.authentication(key("late"))?.at == handshakeTime)
    }

    @Test func sessionsFromResumedConnectionsKeepTheTimeOfTheFullHandshake() throws {
        #expect(try handshakes.resumes(clientContext, serverContext, key: "a") == false)
        let cache = try #require(clientContext.sessionCache)
        let authenticated = try #require(cache.authentication(key("a")))
        time.withLockedValue { $0 += 590 }
        #expect(try handshakes.resumes(clientContext, serverContext, key: "a") == true)
        // One left, and the one the resumed connection brought: both stand for the first handshake.
        #expect(cache.count == 2)
        #expect(cache.authentication(key("a")) == authenticated)
        #expect(cache.take(key("a"), now: authenticated.at + 600) == nil)
        #expect(cache.count == 0)
    }

    @Test func nothingIsKeptFromAServerThatFailedVerification() throws {
        let unverified = try handshakes.client(trust: handshakes.pki.otherCA) { $0.verifyPeer = false }
        #expect(try handshakes.resumes(unverified, serverContext, key: "a") == false)
        #expect(unverified.sessionCache?.count == 0)
    }

    @Test func tls12SessionsAreNotKept() throws {
        var configuration = OpenSSLContext.Configuration(role: .server)
        configuration.certificateChainFile = handshakes.pki.serverChain
        configuration.privateKeyFile = handshakes.pki.serverKey
        configuration.tls12Only = true
        let tls12 = try OpenSSLContext(configuration: configuration)
        for _ in 0..<2 { #expect(try handshakes.resumes(clientContext, tls12, key: "a") == false) }
        #expect(clientContext.sessionCache?.count == 0)
    }

    @Test func theNewestSessionsAreKeptPerKey() throws {
        let cache = SessionCache(perKey: 2, lifetime: 600)
        for marker in Int64(1)...3 {
            cache.store(try freshSession(), key: "k", now: now, authentication: .init(at: now + marker, notAfter: .max))
        }
        #expect(cache.count == 2)
        #expect(cache.take("k", now: now)?.authentication.at == now + 3)
        let second = try #require(cache.take("k", now: now))
        #expect(second.authentication.at == now + 2)
        #expect(cache.take("k", now: now) == nil)
        cache.store(second.session, key: "k", now: now, authentication: second.authentication)
    }

    @Test func whenFullOnlyExpiredSessionsMakeRoom() throws {
        let small = SessionCache(capacity: 1, lifetime: 600)
        let at = now
        small.store(try freshSession(), key: "x", now: at, authentication: .init(at: at, notAfter: .max))
        small.store(try freshSession(), key: "y", now: at, authentication: .init(at: at, notAfter: .max))
        #expect(small.count == 1)
        #expect(small.take("y", now: at + 1) == nil)
        // 700 s on, x has expired: it makes room for y.
        small.store(try freshSession(), key: "y", now: at + 700, authentication: .init(at: at + 700, notAfter: .max))
        #expect(small.count == 1)
        let y = try #require(small.take("y", now: at + 701))
        small.store(y.session, key: "y", now: at + 701, authentication: y.authentication)
    }
}

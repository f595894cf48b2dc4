import Foundation
@testable import OpenSSLTLS
import Testing

/// The cache's bookkeeping, on a clock the test sets (the handshakes that use it are in InMemoryHandshakeTests).
@Suite struct VerificationCacheTests {
    let a = VerificationCache.Key(digest: [1])
    let b = VerificationCache.Key(digest: [2])
    let c = VerificationCache.Key(digest: [3])

    @Test func anEntryEndsWithTheChainsEarliestNotAfter() {
        let cache = VerificationCache(lifetime: 600)
        cache.remember(a, notAfter: 1000, now: 900)
        #expect(cache.contains(a, now: 999))
        #expect(!cache.contains(a, now: 1000))
        #expect(cache.count == 0)
    }

    @Test func anEntryEndsAfterItsLifetime() {
        let cache = VerificationCache(lifetime: 600)
        cache.remember(a, notAfter: 1_000_000, now: 0)
        #expect(cache.contains(a, now: 599))
        #expect(!cache.contains(a, now: 600))
    }

    @Test func aChainAlreadyExpiredIsNotKept() {
        let cache = VerificationCache(lifetime: 600)
        cache.remember(a, notAfter: 100, now: 100)
        #expect(cache.count == 0)
        #expect(!cache.contains(a, now: 99))
    }

    @Test func whenFullOnlyExpiredEntriesMakeRoom() {
        let cache = VerificationCache(capacity: 2, lifetime: 600)
        cache.remember(a, notAfter: 100, now: 0)
        cache.remember(b, notAfter: 200, now: 0)
        cache.remember(c, notAfter: 300, now: 0)
        #expect(cache.contains(a, now: 1) && cache.contains(b, now: 1) && !cache.contains(c, now: 1))
        // At 150 a has expired: it makes room for c; b stays.
        cache.remember(c, notAfter: 300, now: 150)
        #expect(cache.count == 2)
        #expect(cache.contains(b, now: 151) && cache.contains(c, now: 151))
    }

    @Test func aVerifiedChainIsKeptUntilItsEarliestNotAfter() throws {
        let handshakes = try InMemoryHandshakeTests()
        let context = try handshakes.client { $0.verificationCacheLifetime = 100 * 365 * 86_400 }
        #expect(try handshakes.connect(context, to: "localhost") == .complete)
        // The chain verified: the server's certificate and the CA it chains to.
        let certificates = try [handshakes.pki.serverChain, handshakes.pki.ca].flatMap { path in
            try OpenSSLCertificate.chain(pem: Array(try Data(contentsOf: URL(fileURLWithPath: path))))
        }
        let earliest = try #require(certificates.map(\.notAfter).min())
        #expect(context.verificationCache?.expiries == [earliest])
    }
}

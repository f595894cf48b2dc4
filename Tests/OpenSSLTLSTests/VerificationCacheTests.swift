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

    @Test func whenFullTheExpiredGoFirstThenTheSoonestToExpire() {
        let cache = VerificationCache(capacity: 2, lifetime: 600)
        cache.remember(a, notAfter: 100, now: 0)
        cache.remember(b, notAfter: 200, now: 0)
        cache.remember(c, notAfter: 300, now: 0)
        #expect(!cache.contains(a, now: 1) && cache.contains(b, now: 1) && cache.contains(c, now: 1))
        // At 250 b has expired: it makes room, c stays.
        cache.remember(a, notAfter: 400, now: 250)
        #expect(cache.count == 2)
        #expect(cache.contains(a, now: 251) && cache.contains(c, now: 251))
    }
}

import Foundation
import Interception
import NIOCore
import NIOEmbedded
import NIOPosix
import OpenSSLTLS
import Synchronization
import Testing

@Suite struct LeafCacheTests {
    let authority: OpenSSLCertificateAuthority
    let start = Int64(Date().timeIntervalSince1970)

    init() throws {
        let key = try OpenSSLPrivateKey.generateP256()
        let ca = try OpenSSLCertificateAuthority.selfSignedCA(
            commonName: "cache test CA", organization: nil, key: key, now: start, lifetime: 365 * 86_400)
        authority = try OpenSSLCertificateAuthority(chain: [ca], key: key)
    }

    func cache(limits: LeafCache.Limits = .init()) throws -> LeafCache {
        let fixed = start
        return LeafCache(authority: authority, leafKey: try .generateP256(), limits: limits) { fixed }
    }

    @Test func aNameIsMintedOnceAndThenServedFromTheCache() throws {
        let cache = try cache()
        let loop = EmbeddedEventLoop()
        let first = try cache.leaf(for: .dns("a.test"), on: loop).wait()
        let second = try cache.leaf(for: .dns("a.test"), on: loop).wait()
        #expect(first.leaf == second.leaf)
        #expect(cache.mintCount == 1)
        _ = try cache.leaf(for: .dns("b.test"), on: loop).wait()
        _ = try cache.leaf(for: .ip("127.0.0.1"), on: loop).wait()
        #expect(cache.mintCount == 3 && cache.count == 3)
    }

    @Test func aBurstForANewNameMintsOnce() async throws {
        let cache = try cache()
        let group = MultiThreadedEventLoopGroup.singleton
        let leaves = try await withThrowingTaskGroup(of: OpenSSLCertificate.self) { tasks in
            for _ in 0..<64 {
                tasks.addTask {
                    try await cache.leaf(for: .dns("burst.test"), on: group.any()).get().leaf
                }
            }
            var all: [OpenSSLCertificate] = []
            for try await leaf in tasks { all.append(leaf) }
            return all
        }
        #expect(leaves.count == 64)
        #expect(Set(leaves.map(\.serialNumber)).count == 1)
        #expect(cache.mintCount == 1)
    }

    @Test func theLeastRecentlyUsedAreEvictedAtTheEntryLimit() throws {
        let cache = try cache(limits: .init(entries: 10, bytes: 1 << 30))
        let loop = EmbeddedEventLoop()
        for index in 0..<10 { _ = try cache.leaf(for: .dns("n\(index).test"), on: loop).wait() }
        _ = try cache.leaf(for: .dns("n0.test"), on: loop).wait()  // recently used: survives
        _ = try cache.leaf(for: .dns("n10.test"), on: loop).wait()
        #expect(cache.count <= 10)
        let before = cache.mintCount
        _ = try cache.leaf(for: .dns("n0.test"), on: loop).wait()
        #expect(cache.mintCount == before)  // still cached
        _ = try cache.leaf(for: .dns("n1.test"), on: loop).wait()
        #expect(cache.mintCount == before + 1)  // the oldest went
    }

    @Test func theByteLimitHoldsToo() throws {
        let cache = try cache(limits: .init(entries: 1000, bytes: 20_000))
        let loop = EmbeddedEventLoop()
        for index in 0..<50 { _ = try cache.leaf(for: .dns("b\(index).test"), on: loop).wait() }
        #expect(cache.count < 50 && cache.count >= 5)
    }

    @Test func aLeafIsRenewedBeforeItExpires() throws {
        let now = Mutex(start)
        let cache = LeafCache(authority: authority, leafKey: try .generateP256()) { now.withLock { $0 } }
        let loop = EmbeddedEventLoop()
        let first = try cache.leaf(for: .dns("renew.test"), on: loop).wait()
        now.withLock { $0 += 15 * 86_400 }
        #expect(try cache.leaf(for: .dns("renew.test"), on: loop).wait().leaf == first.leaf)
        now.withLock { $0 += 6 * 86_400 }  // past two thirds of 30 days
        let renewed = try cache.leaf(for: .dns("renew.test"), on: loop).wait()
        #expect(renewed.leaf != first.leaf)
        #expect(renewed.leaf.notAfter > first.leaf.notAfter)
        #expect(cache.count == 1)
    }

    @Test func aFailedMintFailsEveryWaiterAndIsNotCached() throws {
        let cache = try cache()
        let loop = EmbeddedEventLoop()
        #expect(throws: OpenSSLCertificateAuthority.MintingError.invalidName("bad name")) {
            _ = try cache.leaf(for: .dns("bad name"), on: loop).wait()
        }
        #expect(cache.count == 0)
    }

    /// `mintAhead`, while a CONNECT's host is resolved: the connection that asks next finds the leaf; a leaf cached
    /// and fresh is not minted again, a stale one is; a name that cannot be minted leaves nothing behind.
    @Test func aLeafMintedAheadServesTheNextLookupAndIsMintedOnce() throws {
        let now = Mutex(start)
        let cache = LeafCache(authority: authority, leafKey: try .generateP256()) { now.withLock { $0 } }
        let loop = EmbeddedEventLoop()
        #expect(!cache.isCached(.dns("ahead.test")))
        cache.mintAhead(for: .dns("ahead.test"), on: loop)
        #expect(cache.mintCount == 1 && cache.isCached(.dns("ahead.test")))
        let served = try cache.leaf(for: .dns("ahead.test"), on: loop).wait()
        cache.mintAhead(for: .dns("ahead.test"), on: loop)
        #expect(cache.mintCount == 1)
        now.withLock { $0 += 21 * 86_400 }  // past two thirds of 30 days: due for renewal
        #expect(!cache.isCached(.dns("ahead.test")))
        cache.mintAhead(for: .dns("ahead.test"), on: loop)
        #expect(cache.mintCount == 2)
        #expect(try cache.leaf(for: .dns("ahead.test"), on: loop).wait().leaf != served.leaf)
        cache.mintAhead(for: .dns("bad name"), on: loop)
        #expect(cache.count == 1 && !cache.isCached(.dns("bad name")))
    }
}

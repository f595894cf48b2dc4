@testable import EgressProxy
import Glibc
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@Suite struct DNSCacheTests {
    let v4 = try! SocketAddress(ipAddress: "192.0.2.7", port: 443)
    let v6 = try! SocketAddress(ipAddress: "2001:db8::7", port: 443)

    @Test func answersAreReusedWithTheRequestedPort() throws {
        let cache = DNSCache(ttl: .seconds(60))
        #expect(cache.lookUp(host: "example.org", port: 443) == nil)
        cache.store(host: "example.org", ipv4: [v4], ipv6: [v6])
        let hit = try #require(cache.lookUp(host: "example.org", port: 8443))
        #expect(hit.ipv4.map(\.port) == [8443])
        #expect(hit.ipv6.map(\.port) == [8443])
        #expect(hit.ipv4.first?.ipAddress == "192.0.2.7")
        #expect(cache.lookUp(host: "other.example", port: 443) == nil)
    }

    @Test func expiredOrDisabledMeansAMiss() {
        let expiring = DNSCache(ttl: .nanoseconds(1))
        expiring.store(host: "example.org", ipv4: [v4], ipv6: [])
        #expect(expiring.lookUp(host: "example.org", port: 443) == nil)

        let off = DNSCache(ttl: .zero)
        off.store(host: "example.org", ipv4: [v4], ipv6: [])
        #expect(off.lookUp(host: "example.org", port: 443) == nil)
    }

    @Test func emptyAnswersAreNotCachedAndTheCacheIsBounded() {
        let cache = DNSCache(ttl: .seconds(60), capacity: 2)
        cache.store(host: "empty.example", ipv4: [], ipv6: [])
        #expect(cache.lookUp(host: "empty.example", port: 1) == nil)
        for index in 0..<10 {
            cache.store(host: "h\(index).example", ipv4: [v4], ipv6: [])
        }
        let kept = (0..<10).filter { cache.lookUp(host: "h\($0).example", port: 1) != nil }
        #expect(kept.count <= 2)
        #expect(kept.contains(9))
    }
}

@Suite struct NameLookupCoalescingTests {
    let v4 = try! SocketAddress(ipAddress: "192.0.2.7", port: 0)
    let v6 = try! SocketAddress(ipAddress: "2001:db8::7", port: 0)

    @Test func aNameBeingLookedUpIsJoinedNotLookedUpAgain() {
        let cache = DNSCache(ttl: .zero)
        let answers = NIOLockedValueBox([String]())
        #expect(cache.join(host: "a.example") { _ in answers.withLockedValue { $0.append("first") } })
        #expect(!cache.join(host: "a.example") { _ in answers.withLockedValue { $0.append("second") } })
        #expect(cache.join(host: "b.example") { _ in answers.withLockedValue { $0.append("b") } })
        #expect(cache.lookupsUnderWay == 2)
        cache.finish(host: "a.example", .success((ipv4: [v4], ipv6: [])))
        #expect(answers.withLockedValue { $0 } == ["first", "second"])
        #expect(cache.lookupsUnderWay == 1)
        // Once finished, the next connection to the name starts a lookup of its own.
        #expect(cache.join(host: "a.example") { _ in })
    }

    @Test func anAnswerIsKeptBeforeItsWaitersHearOfItAndAFailureIsNot() {
        let cache = DNSCache(ttl: .seconds(60))
        let seenInTheCache = NIOLockedValueBox(false)
        _ = cache.join(host: "a.example") { _ in
            seenInTheCache.withLockedValue { $0 = cache.lookUp(host: "a.example", port: 443) != nil }
        }
        cache.finish(host: "a.example", .success((ipv4: [v4], ipv6: [v6])))
        #expect(seenInTheCache.withLockedValue { $0 })

        _ = cache.join(host: "gone.example") { _ in }
        cache.finish(host: "gone.example", .failure(NameResolutionError(host: "gone.example", code: EAI_NONAME)))
        #expect(cache.lookUp(host: "gone.example", port: 443) == nil)
        #expect(cache.lookupsUnderWay == 0)
    }

    /// A burst of connections to one new name while its lookup is under way: one lookup, each connection
    /// answered with its own port; a failure reaches every one of them.
    @Test func aBurstOfConnectionsToANewNameCostsOneLookup() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        let cache = DNSCache(ttl: .zero)  // no answers kept: only the coalescing can spare a lookup
        let calls = NIOLockedValueBox([String: Int]())
        let gate = ConditionLock(value: 0)  // 1 once the test lets the lookups answer
        let lookUp: ThreadPoolResolver.LookUp = { host, port in
            calls.withLockedValue { $0[host, default: 0] += 1 }
            gate.lock(whenValue: 1)
            gate.unlock()
            if host == "gone.example" { return .failure(NameResolutionError(host: host, code: EAI_NONAME)) }
            return .success((ipv4: [try! SocketAddress(ipAddress: "192.0.2.7", port: port)], ipv6: []))
        }
        var released = false
        func release() {
            guard !released else { return }
            released = true
            gate.lock()
            gate.unlock(withValue: 1)
        }
        defer { release() }  // a failed expectation must not leave the pool's threads waiting
        let loop = group.next()
        let ports = [443, 8443, 443, 9443, 443]
        var burst: [EventLoopFuture<[SocketAddress]>] = []
        for port in ports {
            let resolver = ThreadPoolResolver(pool: pool, cache: cache, eventLoop: loop, lookUp: lookUp)
            let v6 = resolver.initiateAAAAQuery(host: "burst.example", port: port)
            burst.append(v6.flatMap { _ in resolver.initiateAQuery(host: "burst.example", port: port) })
        }
        var failing: [EventLoopFuture<[SocketAddress]>] = []
        for _ in 0..<3 {
            let resolver = ThreadPoolResolver(pool: pool, cache: cache, eventLoop: loop, lookUp: lookUp)
            failing.append(resolver.initiateAAAAQuery(host: "gone.example", port: 443))
        }
        #expect(cache.lookupsUnderWay == 2)
        release()
        for (future, port) in zip(burst, ports) {
            let addresses = try await future.get()
            #expect(addresses.map(\.port) == [port])
            #expect(addresses.first?.ipAddress == "192.0.2.7")
        }
        for future in failing {
            await #expect(throws: NameResolutionError.self) { try await future.get() }
        }
        #expect(calls.withLockedValue { $0 } == ["burst.example": 1, "gone.example": 1])
        #expect(cache.lookupsUnderWay == 0)
        try await pool.shutdownGracefully()
        try await group.shutdownGracefully()
    }
}

@testable import EgressProxy
import NIOCore
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

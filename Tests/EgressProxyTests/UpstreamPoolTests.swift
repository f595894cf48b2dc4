@testable import EgressProxy
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Telemetry
import Testing

/// The pool of idle upstream connections, with embedded channels: what is kept, what is taken, and when a kept
/// connection leaves.
@Suite struct UpstreamPoolTests {
    final class Clock: Sendable {
        private let now = NIOLockedValueBox<Int64>(1_000_000)
        var value: Int64 { now.withLockedValue { $0 } }
        func advance(_ seconds: Int64) { now.withLockedValue { $0 += seconds } }
    }

    let clock = Clock()
    let loop = EmbeddedEventLoop()

    func pool(idle: TimeAmount = .seconds(4), perKey: Int = 32, capacity: Int = 256) -> UpstreamPool {
        let clock = self.clock
        return UpstreamPool(idleTimeout: idle, perKey: perKey, capacity: capacity, clock: { clock.value })
    }

    func key(_ host: String = "api.example.test", agent: String = "agent-a") -> UpstreamPool.Key {
        UpstreamPool.Key(agent: agent, host: host, port: 443, address: "127.0.0.1", serverName: host, alpnOffer: ["http/1.1"])
    }

    func connectedChannel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel(loop: loop)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
        return channel
    }

    func idle(_ channel: EmbeddedChannel, openedBy: String = "e1", reuseUntil: Int64? = nil) -> UpstreamPool.Idle {
        UpstreamPool.Idle(
            channel: channel, negotiatedProtocol: "http/1.1", resumed: false, openedBy: openedBy,
            reuseUntil: reuseUntil ?? clock.value + 600)
    }

    @Test func aKeptConnectionIsTakenOnceNewestFirstAndOnlyForItsKey() throws {
        let pool = pool()
        let older = try connectedChannel()
        let newer = try connectedChannel()
        #expect(pool.keep(idle(older, openedBy: "older"), key: key()))
        #expect(pool.keep(idle(newer, openedBy: "newer"), key: key()))
        #expect(pool.count == 2)
        // Another agent, another destination: nothing.
        #expect(pool.take(key(agent: "agent-b"), on: loop) == nil)
        #expect(pool.take(key("other.example.test"), on: loop) == nil)
        #expect(pool.take(key(), on: loop)?.openedBy == "newer")
        #expect(pool.take(key(), on: loop)?.openedBy == "older")
        #expect(pool.take(key(), on: loop) == nil)
        #expect(pool.count == 0)
        // Taken, it is still open, with the idle handler last for the taker to replace.
        #expect(newer.isActive)
        #expect((try? newer.pipeline.syncOperations.handler(type: IdleUpstreamHandler.self)) != nil)
    }

    /// A CONNECT takes a kept connection for its agent, host and port before it knows the rest of the key: one
    /// verified for the host itself first, else the newest; unused, it goes back as it was.
    @Test func aReservationPrefersTheHostsOwnNameThenTheNewestAndGoesBackUnused() throws {
        let pool = pool()
        func key(_ name: String, _ offer: [String]) -> UpstreamPool.Key {
            UpstreamPool.Key(agent: "agent-a", host: "api.example.test", port: 443, address: "127.0.0.1", serverName: name, alpnOffer: offer)
        }
        #expect(pool.keep(idle(try connectedChannel(), openedBy: "other-name"), key: key("cdn.example.test", [])))
        #expect(pool.keep(idle(try connectedChannel(), openedBy: "own-old"), key: key("api.example.test", [])))
        #expect(pool.keep(idle(try connectedChannel(), openedBy: "own-new"), key: key("api.example.test", ["h2", "http/1.1"])))
        #expect(pool.keep(idle(try connectedChannel(), openedBy: "newest-other"), key: key("cdn.example.test", ["h2"])))
        #expect(pool.reserve(agent: "agent-b", host: "api.example.test", port: 443, on: loop) == nil)
        #expect(pool.reserve(agent: "agent-a", host: "api.example.test", port: 8443, on: loop) == nil)
        let reservation = try #require(pool.reserve(agent: "agent-a", host: "api.example.test", port: 443, on: loop))
        #expect(reservation.idle.openedBy == "own-new")
        #expect(pool.count == 3)
        // Not used: back, and the next reservation may take it again.
        reservation.restore()
        #expect(pool.count == 4)
        #expect(pool.reserve(agent: "agent-a", host: "api.example.test", port: 443, on: loop)?.idle.openedBy == "own-new")
        #expect(pool.reserve(agent: "agent-a", host: "api.example.test", port: 443, on: loop)?.idle.openedBy == "own-old")
        #expect(pool.reserve(agent: "agent-a", host: "api.example.test", port: 443, on: loop)?.idle.openedBy == "newest-other")
        // A reserved connection that closed meanwhile is not put back.
        let closing = try #require(pool.reserve(agent: "agent-a", host: "api.example.test", port: 443, on: loop))
        try closing.idle.channel.close().wait()
        closing.restore()
        #expect(pool.count == 0)
    }

    /// After a reload the old pool empties while the new one fills: the gauge counts both.
    @Test func theIdleConnectionsGaugeCountsEveryPool() throws {
        let export = PrometheusExport()
        let metrics = ProxyMetrics(factory: export.factory)
        func gauge() -> String? {
            String(decoding: export.exposition(), as: UTF8.self).split(separator: "\n")
                .first { $0.hasPrefix("kaizen_egress_upstream_idle_connections ") }.map(String.init)
        }
        let clock = self.clock
        let old = UpstreamPool(idleTimeout: .seconds(4), metrics: metrics, clock: { clock.value })
        let new = UpstreamPool(idleTimeout: .seconds(4), metrics: metrics, clock: { clock.value })
        let leaving = try connectedChannel()
        #expect(old.keep(idle(leaving), key: key()))
        #expect(new.keep(idle(try connectedChannel()), key: key()))
        #expect(new.keep(idle(try connectedChannel()), key: key("b.example.test")))
        #expect(gauge() == "kaizen_egress_upstream_idle_connections 3.0")
        leaving.pipeline.fireChannelInactive()  // the old pool's last one goes
        #expect(gauge() == "kaizen_egress_upstream_idle_connections 2.0")
        _ = new.take(key(), on: loop)
        #expect(gauge() == "kaizen_egress_upstream_idle_connections 1.0")
    }

    @Test func aConnectionIdleForTheTimeoutIsClosedAndForgotten() throws {
        let pool = pool(idle: .seconds(4))
        let channel = try connectedChannel()
        #expect(pool.keep(idle(channel), key: key()))
        loop.advanceTime(by: .seconds(3))
        #expect(channel.isActive && pool.count == 1)
        loop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive)
        #expect(pool.count == 0)
        #expect(pool.take(key(), on: loop) == nil)
    }

    @Test func aTakenConnectionNoLongerTimesOutOnceItsIdleHandlerIsGone() throws {
        let pool = pool(idle: .seconds(4))
        let channel = try connectedChannel()
        #expect(pool.keep(idle(channel), key: key()))
        let taken = try #require(pool.take(key(), on: loop))
        IdleUpstreamHandler.remove(from: taken.channel)
        #expect((try? channel.pipeline.syncOperations.handler(type: IdleUpstreamHandler.self)) == nil)
        loop.advanceTime(by: .seconds(10))
        #expect(channel.isActive)
        // Nor does anything the upstream sends now reach a watcher.
        try channel.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\n"))
        #expect(channel.isActive)
    }

    @Test func anUpstreamThatClosesOrSpeaksWhileKeptLeavesThePool() throws {
        let pool = pool()
        let closed = try connectedChannel()
        let speaking = try connectedChannel()
        #expect(pool.keep(idle(closed), key: key()))
        #expect(pool.keep(idle(speaking), key: key("other.example.test")))
        closed.pipeline.fireChannelInactive()
        #expect(pool.count == 1)
        // Bytes the upstream sends, before any decoder makes something of them.
        let raw = try connectedChannel()
        #expect(pool.keep(idle(raw), key: key("raw.example.test")))
        try raw.writeInbound(ByteBuffer(string: "HTTP/1.1 2"))
        #expect(!raw.isActive)
        // An error (a decoder's, for a response nobody asked for).
        let erring = try connectedChannel()
        #expect(pool.keep(idle(erring), key: key("erring.example.test")))
        erring.pipeline.fireErrorCaught(HTTPParserError.invalidStatus)
        #expect(!erring.isActive)
        #expect(pool.count == 1)
        // A response nobody asked for.
        try speaking.writeInbound(HTTPClientResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok)))
        #expect(!speaking.isActive)
        #expect(pool.count == 0)
        #expect(pool.take(key(), on: loop) == nil && pool.take(key("other.example.test"), on: loop) == nil)
    }

    /// Never past the time its upstream's authentication allows (the pool's maximum age, the chain's notAfter).
    @Test func aConnectionPastItsReuseTimeIsNeitherKeptNorTaken() throws {
        let pool = pool(idle: .seconds(60))
        #expect(pool.reuseUntil(authenticatedAt: clock.value, notAfter: clock.value + 10_000) == clock.value + 600)
        #expect(pool.reuseUntil(authenticatedAt: clock.value, notAfter: clock.value + 30) == clock.value + 30)
        let expired = try connectedChannel()
        #expect(!pool.keep(idle(expired, reuseUntil: clock.value), key: key()))
        let channel = try connectedChannel()
        #expect(pool.keep(idle(channel, reuseUntil: clock.value + 30), key: key()))
        clock.advance(30)
        #expect(pool.take(key(), on: loop) == nil)
        #expect(!channel.isActive)
        #expect(pool.count == 0)
    }

    @Test func aFullPoolKeepsNoMoreAndAZeroTimeoutKeepsNothing() throws {
        let pool = pool(perKey: 2, capacity: 3)
        #expect(pool.keep(idle(try connectedChannel()), key: key()))
        #expect(pool.keep(idle(try connectedChannel()), key: key()))
        #expect(!pool.keep(idle(try connectedChannel()), key: key()))  // the key's limit
        #expect(pool.keep(idle(try connectedChannel()), key: key("b.example.test")))
        #expect(!pool.keep(idle(try connectedChannel()), key: key("c.example.test")))  // the pool's
        #expect(pool.count == 3)

        let off = self.pool(idle: .zero)
        #expect(!off.isEnabled)
        #expect(!off.keep(idle(try connectedChannel()), key: key()))
        // A closed channel is not kept either.
        let closed = try connectedChannel()
        try closed.close().wait()
        #expect(!self.pool().keep(idle(closed), key: key()))
    }
}

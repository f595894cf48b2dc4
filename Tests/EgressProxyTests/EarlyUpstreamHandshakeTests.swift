@testable import EgressProxy
import NIOCore
import NIOEmbedded
import NIOTLS
import Testing

/// What an early upstream handshake keeps until its connection serves (`EarlyHandshakeRecorder`), and what it is
/// made for (`ClientHelloHabits`), without sockets.
@Suite struct EarlyUpstreamHandshakeTests {
    /// Writes down every inbound event it gets, in order.
    final class Collector: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var seen: [String] = []
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            seen.append("read " + String(buffer: unwrapInboundIn(data)))
        }
        func channelReadComplete(context: ChannelHandlerContext) { seen.append("read-complete") }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case TLSUserEvent.handshakeCompleted(let chosen) = event {
                seen.append("handshake \(chosen ?? "none")")
            } else {
                seen.append("event")
            }
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { seen.append("error") }
        func channelInactive(context: ChannelHandlerContext) { seen.append("inactive") }
    }

    struct Failure: Error {}

    @Test func whatTheHandshakeBringsIsKeptThenHandedOnInOrder() throws {
        let channel = EmbeddedChannel()
        let recorder = EarlyHandshakeRecorder()
        try channel.pipeline.syncOperations.addHandler(recorder)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()

        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: "h2"))
        try channel.writeInbound(ByteBuffer(string: "settings"))  // a read, then a read-complete
        // What came is kept, not handed on. (That reading stops meanwhile, by autoRead, is not checked here:
        // EmbeddedChannel does not model that option.)
        #expect(recorder.negotiated == .some("h2"))
        #expect(!recorder.failed && !recorder.closed)
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)

        let collector = Collector()
        try channel.pipeline.syncOperations.addHandler(collector)
        recorder.release()
        #expect(collector.seen == ["handshake h2", "read settings", "read-complete"])
        // Gone from the pipeline: what comes now goes straight on.
        #expect(throws: (any Error).self) { try channel.pipeline.syncOperations.handler(type: EarlyHandshakeRecorder.self) }
        try channel.writeInbound(ByteBuffer(string: "later"))
        #expect(collector.seen.suffix(2) == ["read later", "read-complete"])
        _ = try? channel.finish()
    }

    @Test func aFailureOrACloseBeforeTheClientHelloIsNoted() throws {
        let channel = EmbeddedChannel()
        let recorder = EarlyHandshakeRecorder()
        try channel.pipeline.syncOperations.addHandler(recorder)
        channel.pipeline.fireErrorCaught(Failure())
        #expect(recorder.failed && !recorder.closed && recorder.negotiated == nil)

        let closing = EmbeddedChannel()
        let closed = EarlyHandshakeRecorder()
        try closing.pipeline.syncOperations.addHandler(closed)
        closing.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: nil))
        closing.pipeline.fireChannelInactive()
        #expect(closed.closed && !closed.failed && closed.negotiated == .some(nil))

        // Half-closed by the upstream: the channel stays open (for writing), the connection is never to serve.
        let halfClosing = EmbeddedChannel()
        let halfClosed = EarlyHandshakeRecorder()
        try halfClosing.pipeline.syncOperations.addHandler(halfClosed)
        try halfClosing.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
        halfClosing.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(halfClosed.closed && halfClosing.isActive)
        let early = EarlyUpstreamHandshake(upstreamName: "a.test", offer: [], recorder: halfClosed)
        #expect(!early.matches(upstreamName: "a.test", offer: [], channel: halfClosing))

        // A setup that failed: never to serve either.
        let failing = EarlyHandshakeRecorder()
        failing.setUpFailed()
        #expect(!EarlyUpstreamHandshake(upstreamName: "a.test", offer: [], recorder: failing)
            .matches(upstreamName: "a.test", offer: [], channel: halfClosing))
        _ = try? channel.finish()
        _ = try? closing.finish()
        _ = try? halfClosing.finish()
    }

    @Test func aHandshakeServesOnlyTheNameAndOfferItWasMadeForOnAnOpenConnection() throws {
        let channel = EmbeddedChannel()
        let recorder = EarlyHandshakeRecorder()
        try channel.pipeline.syncOperations.addHandler(recorder)
        let early = EarlyUpstreamHandshake(upstreamName: "api.example.com", offer: ["h2", "http/1.1"], recorder: recorder)
        // Not connected: not active.
        #expect(!early.matches(upstreamName: "api.example.com", offer: ["h2", "http/1.1"], channel: channel))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
        #expect(early.matches(upstreamName: "api.example.com", offer: ["h2", "http/1.1"], channel: channel))
        #expect(!early.matches(upstreamName: "www.example.com", offer: ["h2", "http/1.1"], channel: channel))
        #expect(early.matches(upstreamName: "API.Example.com", offer: ["h2", "http/1.1"], channel: channel))
        #expect(!early.matches(upstreamName: "api.example.com", offer: ["http/1.1"], channel: channel))
        #expect(!early.matches(upstreamName: "api.example.com", offer: [], channel: channel))
        channel.pipeline.fireErrorCaught(Failure())
        #expect(!early.matches(upstreamName: "api.example.com", offer: ["h2", "http/1.1"], channel: channel))
        _ = try? channel.finish()
    }

    @Test func anOfferIsGuessedOnlyOnceAnAgentsClientsMadeItTwiceInARow() {
        let habits = ClientHelloHabits()
        #expect(habits.settledOffer(agent: "a") == nil)
        habits.note(agent: "a", offer: ["h2", "http/1.1"], port: 8443)
        #expect(habits.settledOffer(agent: "a") == nil)
        habits.note(agent: "a", offer: ["h2", "http/1.1"], port: 8443)
        #expect(habits.settledOffer(agent: "a") == ["h2", "http/1.1"])
        #expect(habits.settledOffer(agent: "b") == nil)
        // Another offer unsettles it until it is made twice in turn.
        habits.note(agent: "a", offer: [], port: 443)
        #expect(habits.settledOffer(agent: "a") == nil)
        habits.note(agent: "a", offer: [], port: 443)
        #expect(habits.settledOffer(agent: "a") == [])
    }

    @Test func aDestinationWhoseClientHelloNamedAnotherHostIsNotGuessedUntilOneNamesIt() {
        let habits = ClientHelloHabits()
        let api = Destination(host: "API.example.com", port: 443, isIPLiteral: false)
        #expect(!habits.namesAnotherHost(agent: "a", destination: api))
        habits.note(agent: "a", destination: api, namedIt: false)
        #expect(habits.namesAnotherHost(agent: "a", destination: Destination(host: "api.example.com", port: 443, isIPLiteral: false)))
        #expect(!habits.namesAnotherHost(agent: "b", destination: api))
        #expect(!habits.namesAnotherHost(agent: "a", destination: Destination(host: "api.example.com", port: 8443, isIPLiteral: false)))
        habits.note(agent: "a", destination: api, namedIt: true)
        #expect(!habits.namesAnotherHost(agent: "a", destination: api))
    }

    @Test func tlsIsExpectedOn443AndOnPortsItWasInspectedOn() {
        let habits = ClientHelloHabits()
        #expect(habits.seenTLS(onPort: 443))
        #expect(!habits.seenTLS(onPort: 8443))
        habits.note(agent: "a", offer: [], port: 8443)
        #expect(habits.seenTLS(onPort: 8443))
        for port in 10_000..<10_000 + ClientHelloHabits.portLimit { habits.note(agent: "a", offer: [], port: port) }
        #expect(!habits.seenTLS(onPort: 10_000 + ClientHelloHabits.portLimit - 1), "at most \(ClientHelloHabits.portLimit) ports")
    }
}

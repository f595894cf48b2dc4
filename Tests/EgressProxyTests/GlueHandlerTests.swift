import ControlPlane
import Glibc
@testable import EgressProxy
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Policy
import Testing

/// The relay without sockets: two EmbeddedChannels joined by a matched pair of glue handlers.
@Suite struct GlueHandlerTests {
    final class NullSink: ActionSink {
        func record(_ record: ActionRecord) {}
    }

    /// Counts the read requests that reach the head of a channel's pipeline (what asks the socket for data).
    /// Locked: `InspectionStartHandlerTests` reads it from the test's task while its loop runs elsewhere.
    final class ReadCounter: ChannelOutboundHandler, @unchecked Sendable {
        typealias OutboundIn = ByteBuffer
        private let count = NIOLockedValueBox(0)
        var reads: Int { count.withLockedValue { $0 } }
        func read(context: ChannelHandlerContext) {
            count.withLockedValue { $0 += 1 }
            context.read()
        }
    }

    func makePair() throws -> (client: EmbeddedChannel, upstream: EmbeddedChannel, clientReads: ReadCounter) {
        let (client, upstream, counter, _) = try makePair(
            reporting: Reporting(agent: "test", sink: NullSink(), logger: Logger(label: "test")), transport: .connect,
            destination: Destination(host: "example.org", port: 443, isIPLiteral: false))
        return (client, upstream, counter)
    }

    /// A client and an upstream channel on one embedded loop joined by a matched pair of glue handlers, with a
    /// read counter at the head of the client's pipeline.
    func makePair(reporting: Reporting, transport: ConnectMetadata.Transport, destination: Destination) throws -> (
        client: EmbeddedChannel, upstream: EmbeddedChannel, clientReads: ReadCounter, session: TunnelSession
    ) {
        let loop = EmbeddedEventLoop()
        let client = EmbeddedChannel(loop: loop)
        let upstream = EmbeddedChannel(loop: loop)
        let session = TunnelSession(
            reporting: reporting,
            metadata: ConnectMetadata(
                eventID: EventID.generate(), transport: transport, host: destination.host, port: destination.port,
                client: "127.0.0.1:1", startedAt: "", outcome: .connected),
            destination: destination,
            started: .now(),
            idleTimeout: .hours(1),
            eventLoop: loop
        )
        let (clientGlue, upstreamGlue) = GlueHandler.matchedPair(session: session)
        let counter = ReadCounter()
        try client.pipeline.syncOperations.addHandler(counter)
        try client.pipeline.syncOperations.addHandler(clientGlue)
        try upstream.pipeline.syncOperations.addHandler(upstreamGlue)
        return (client, upstream, counter, session)
    }

    /// Enforce mode, a transparent connection: the client's bytes wait while the SNI's name is looked up (does it
    /// belong to the address?), and no more are read meanwhile, so a client that keeps sending cannot fill memory.
    /// Once the policy lets the tunnel through, the held bytes go out and reading resumes.
    @Test func noMoreIsReadWhileTheHeldBytesWaitForTheLookup() throws {
        let store = PolicyStore(
            configuration: .init(
                endpoint: try ControlPlaneEndpoint(url: "http://127.0.0.1:9"), apiKey: "", tls: nil, agents: ["test"],
                refreshInterval: .seconds(60), cacheDirectory: nil),
            logger: Logger(label: "test"))
        var reporting = Reporting(agent: "test", sink: NullSink(), logger: Logger(label: "test"))
        // Enforcing, with no policy loaded and failing open: every destination is allowed, after the wait.
        reporting.policy = PolicyCheck(store: store, enforcing: true, failClosed: false)
        let (client, upstream, counter, session) = try makePair(
            reporting: reporting, transport: .transparent,
            destination: Destination(host: "127.0.0.1", port: 443, isIPLiteral: true))
        let lookup = client.eventLoop.makePromise(of: Bool.self)
        session.nameBelongs = { _ in lookup.futureResult }
        session.start()

        let hello = ByteBuffer(bytes: InspectionStartHandlerTests.clientHello(serverName: "localhost"))
        try client.writeInbound(hello)
        let more = ByteBuffer(bytes: [UInt8](repeating: 0x17, count: 4096))
        try client.writeInbound(more)
        client.pipeline.read()
        client.pipeline.read()
        #expect(counter.reads == 0, "a read went through while the held bytes waited for the lookup")
        #expect(try upstream.readOutbound(as: ByteBuffer.self) == nil)

        lookup.succeed(true)
        var relayed = ByteBuffer()
        while var chunk = try upstream.readOutbound(as: ByteBuffer.self) { relayed.writeBuffer(&chunk) }
        var expected = hello
        var rest = more
        expected.writeBuffer(&rest)
        #expect(relayed == expected)
        #expect(counter.reads == 1)
    }

    /// Close records and logs name a socket error as the system words it, not by the NIO call that met it.
    @Test func socketErrorsReadAsTheSystemWordsThem() {
        let reset = IOError(errnoCode: ECONNRESET, reason: "read(descriptor:pointer:size:)")
        #expect(GlueHandler.describe(reset) == "connection reset by peer")
        #expect(GlueHandler.describe(ChannelError.ioOnClosedChannel) == "I/O on closed channel")
    }

    @Test func bytesCrossUntouchedBothWays() throws {
        let (client, upstream, _) = try makePair()
        try client.writeInbound(ByteBuffer(string: "hello upstream"))
        #expect(try upstream.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "hello upstream"))
        try upstream.writeInbound(ByteBuffer(string: "hello client"))
        #expect(try client.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "hello client"))
    }

    @Test func aSlowUpstreamStopsReadsFromTheClientUntilItDrains() throws {
        let (client, upstream, counter) = try makePair()
        client.pipeline.read()
        #expect(counter.reads == 1)

        upstream.isWritable = false
        upstream.pipeline.fireChannelWritabilityChanged()
        client.pipeline.read()
        client.pipeline.read()
        #expect(counter.reads == 1)  // held back: nothing more is read while the upstream is full

        upstream.isWritable = true
        upstream.pipeline.fireChannelWritabilityChanged()
        #expect(counter.reads == 2)  // the held read goes out once the upstream drains
    }

    @Test func closingOneSideClosesTheOther() throws {
        let (client, upstream, _) = try makePair()
        try client.close().wait()
        #expect(!upstream.isActive)
    }
}

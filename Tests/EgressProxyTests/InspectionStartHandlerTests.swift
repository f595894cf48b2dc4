@testable import EgressProxy
import ControlPlane
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import OpenSSLTLS
import Testing

/// The handler that decides an inspectable tunnel, on a testing event loop, with a resolver the test holds up.
@Suite struct InspectionStartHandlerTests {
    /// A ClientHello (TLS 1.2 framing, one cipher suite) whose only extension is the server name.
    static func clientHello(serverName: String) -> [UInt8] {
        func be16(_ value: Int) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }
        let name = Array(serverName.utf8)
        let entry: [UInt8] = [0x00] + be16(name.count) + name
        let list = be16(entry.count) + entry
        let extensions: [UInt8] = [0x00, 0x00] + be16(list.count) + list
        let body: [UInt8] =
            [0x03, 0x03] + [UInt8](repeating: 0x11, count: 32) + [0x00] + [0x00, 0x02, 0x13, 0x01] + [0x01, 0x00]
            + be16(extensions.count) + extensions
        let handshake: [UInt8] = [0x01, 0x00] + be16(body.count) + body
        return [0x16, 0x03, 0x01] + be16(handshake.count) + handshake
    }

    /// A CA like `kaizen-egress ca init`'s, in a fresh directory.
    static func writeCA() throws -> (certificate: String, key: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kz-start-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let key = try OpenSSLPrivateKey.generateP256()
        let certificate = try OpenSSLCertificateAuthority.selfSignedCA(
            commonName: "test CA", organization: "kaizen-egress", key: key,
            now: Int64(Date().timeIntervalSince1970), lifetime: 86_400)
        let paths = (certificate: directory + "/ca.pem", key: directory + "/ca.key")
        try Data(try certificate.pemBytes()).write(to: URL(fileURLWithPath: paths.certificate))
        _ = FileManager.default.createFile(atPath: paths.key, contents: Data(try key.pemBytes()), attributes: [.posixPermissions: 0o600])
        return paths
    }

    /// Records the actions, and lets a test wait for the first.
    final class RecordingSink: ActionSink, Sendable {
        let first: EventLoopPromise<ConnectMetadata>
        init(on loop: any EventLoop) { first = loop.makePromise() }
        func record(_ record: ActionRecord) {
            if case .action(let action) = record { first.succeed(action.action.metadata) }
        }
    }

    /// A CONNECT to 127.0.0.1 whose ClientHello names `localhost`, a passthrough host: the decision waits for the
    /// resolver (does the name belong to the address?), whose one thread the test holds until it calls `release`.
    struct WaitingTunnel {
        let loop: NIOAsyncTestingEventLoop
        let client: NIOAsyncTestingChannel
        let upstream: NIOAsyncTestingChannel
        let reads: GlueHandlerTests.ReadCounter
        let actions: RecordingSink
        let hello: [UInt8]
        let release: @Sendable () -> Void
        let shutdown: @Sendable () -> Void
    }

    static func waitingTunnel() async throws -> WaitingTunnel {
        let ca = try writeCA()
        let configuration = try ProxyConfiguration(environment: [
            "KAIZEN_LOCAL": "1", "KAIZEN_CA_CERT": ca.certificate, "KAIZEN_CA_KEY": ca.key,
            "KAIZEN_PASSTHROUGH_HOSTS": "localhost",
        ])
        let inspection = try #require(try Inspection.make(configuration, logger: Logger(label: "test")))
        let resolverPool = NIOThreadPool(numberOfThreads: 1)
        resolverPool.start()
        let held = DispatchSemaphore(value: 0)
        resolverPool.submit { _ in held.wait() }
        let settings = ConnectionSettings(configuration, resolverPool: resolverPool, dnsCache: DNSCache(ttl: .seconds(5)))
        let loop = NIOAsyncTestingEventLoop()
        let actions = RecordingSink(on: loop)
        let reporting = Reporting(agent: "test", sink: actions, logger: Logger(label: "test"))
        let client = NIOAsyncTestingChannel(loop: loop)
        let upstream = NIOAsyncTestingChannel(loop: loop)
        try await client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40_000))
        try await upstream.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443))
        let reads = GlueHandlerTests.ReadCounter()
        try await loop.submit {
            let metadata = ConnectMetadata(
                eventID: EventID.generate(), transport: .connect, host: "127.0.0.1", port: 443,
                client: "127.0.0.1:40000", startedAt: "", outcome: .connected)
            let tunnel = InspectionStartHandler.Tunnel(
                upstream: upstream, destination: Destination(host: "127.0.0.1", port: 443, isIPLiteral: true),
                metadata: metadata, started: .now())
            try client.pipeline.syncOperations.addHandler(reads)
            try client.pipeline.syncOperations.addHandler(
                InspectionStartHandler(tunnel: tunnel, inspection: inspection, settings: settings, reporting: reporting))
        }.get()
        // The ClientHello: the decision now waits for the resolver.
        let hello = clientHello(serverName: "localhost")
        try await client.writeInbound(ByteBuffer(bytes: hello))
        client.pipeline.fireChannelReadComplete()
        return WaitingTunnel(
            loop: loop, client: client, upstream: upstream, reads: reads, actions: actions, hello: hello,
            release: { held.signal() },
            shutdown: {
                held.signal()
                resolverPool.shutdownGracefully { _ in }
                try? FileManager.default.removeItem(atPath: (ca.certificate as NSString).deletingLastPathComponent)
            })
    }

    /// Meanwhile the client's further bytes are held and no more are read, so a client cannot fill the proxy's
    /// memory. Once the name is found to be the address's, the tunnel passes through with every held byte, and
    /// reading resumes.
    @Test(.timeLimit(.minutes(1)))
    func noMoreIsReadWhileTheDecisionWaitsForTheResolver() async throws {
        let tunnel = try await Self.waitingTunnel()
        defer { tunnel.shutdown() }
        let (client, upstream, reads) = (tunnel.client, tunnel.upstream, tunnel.reads)
        // The client asks to read more (as autoRead does after each read), sends more, asks again.
        client.read()
        let more = [UInt8](repeating: 0x17, count: 4096)
        try await client.writeInbound(ByteBuffer(bytes: more))
        client.pipeline.fireChannelReadComplete()
        client.read()
        try await tunnel.loop.submit {}.get()
        #expect(reads.reads == 0, "a read went through while the decision waited")
        #expect(try await upstream.readOutbound(as: ByteBuffer.self) == nil)

        // The resolver answers (localhost is 127.0.0.1): passed through, every held byte relayed in order, and
        // the withheld read asked for once.
        tunnel.release()
        var relayed: [UInt8] = []
        while relayed.count < tunnel.hello.count + more.count {
            var chunk = try await upstream.waitForOutboundWrite(as: ByteBuffer.self)
            relayed += chunk.readBytes(length: chunk.readableBytes) ?? []
        }
        #expect(relayed == tunnel.hello + more)
        try await tunnel.loop.submit {}.get()
        #expect(reads.reads == 1)
        // The handler has left the pipeline; the relay took over.
        let left = try await tunnel.loop.submit {
            (try? client.pipeline.syncOperations.handler(type: InspectionStartHandler.self)) == nil
        }.get()
        #expect(left)
        let action = try await tunnel.actions.first.futureResult.get()
        #expect(action.inspection == "passthrough host")
        #expect(action.sni == "localhost")
    }

    /// A client that leaves while the resolver is asked has nothing relayed, whatever the answer: its held bytes
    /// could be anything, for any address. It is reported as a tunnel that carried nothing.
    @Test(.timeLimit(.minutes(1)))
    func aClientThatLeavesWhileTheDecisionWaitsHasNothingRelayed() async throws {
        let tunnel = try await Self.waitingTunnel()
        defer { tunnel.shutdown() }
        try await tunnel.client.writeInbound(ByteBuffer(bytes: [UInt8](repeating: 0x17, count: 512)))
        tunnel.client.pipeline.fireChannelInactive()
        tunnel.release()
        let action = try await tunnel.actions.first.futureResult.get()
        #expect(action.inspection == InspectionStartHandler.clientLeftEarly)
        try await tunnel.loop.submit {}.get()
        #expect(try await tunnel.upstream.readOutbound(as: ByteBuffer.self) == nil)
    }
}

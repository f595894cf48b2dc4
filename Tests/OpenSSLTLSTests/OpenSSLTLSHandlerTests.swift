import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import NIOTLS
@testable import OpenSSLTLS
import TestSupport
import Testing

/// Records what reaches the top of a TLS channel's pipeline.
final class PlaintextRecorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var received: [UInt8] = []
    var negotiated: [String?] = []
    var errors: [any Error] = []
    /// The events seen, in order: "unclean" (`TLSClosedWithoutNotify`), "inputClosed", "inactive".
    var ends: [String] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += Array(unwrapInboundIn(data).readableBytesView)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted(let protocolName) = event {
            negotiated.append(protocolName)
        } else if event is TLSClosedWithoutNotify {
            ends.append("unclean")
        } else if case ChannelEvent.inputClosed = event {
            ends.append("inputClosed")
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        ends.append("inactive")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        errors.append(error)
        receivedBeforeError.append(received.count)
    }

    /// How many plaintext bytes had arrived when each error did.
    var receivedBeforeError: [Int] = []
}

/// Counts the read requests that reach the head of a pipeline (what asks the socket for more).
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    var reads = 0
    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}

@Suite struct OpenSSLTLSHandlerTests {
    let pki: HandshakePKI

    init() throws {
        pki = try HandshakePKI.shared.get()
    }

    func contexts(trust: String? = nil) throws -> (client: OpenSSLContext, server: OpenSSLContext) {
        var client = OpenSSLContext.Configuration(role: .client)
        client.trustSystemStore = false
        client.additionalTrustFile = trust ?? pki.ca
        client.alpn = ["h2", "http/1.1"]
        var server = OpenSSLContext.Configuration(role: .server)
        server.certificateChainFile = pki.serverChain
        server.privateKeyFile = pki.serverKey
        server.alpn = ["http/1.1"]
        return (try OpenSSLContext(configuration: client), try OpenSSLContext(configuration: server))
    }

    /// Moves every outbound byte of each channel into the other until both are quiet (bounded).
    func interact(_ a: EmbeddedChannel, _ b: EmbeddedChannel) throws {
        for _ in 0..<50 {
            var moved = false
            while let bytes = try a.readOutbound(as: ByteBuffer.self) {
                try b.writeInbound(bytes)
                moved = true
            }
            while let bytes = try b.readOutbound(as: ByteBuffer.self) {
                try a.writeInbound(bytes)
                moved = true
            }
            if !moved { return }
        }
    }

    /// A TLS client and server channel on one embedded loop, each with a recorder above its TLS handler,
    /// connected (the handshake starts; `interact` moves its bytes).
    struct BackToBack {
        let client: EmbeddedChannel
        let server: EmbeddedChannel
        let clientRecorder = PlaintextRecorder()
        let serverRecorder = PlaintextRecorder()

        init(client clientContext: OpenSSLContext, server serverContext: OpenSSLContext, serverName: String) throws {
            let loop = EmbeddedEventLoop()
            client = EmbeddedChannel(loop: loop)
            server = EmbeddedChannel(loop: loop)
            try client.pipeline.syncOperations.addHandlers([
                try OpenSSLTLSHandler(context: clientContext, serverName: serverName), clientRecorder,
            ])
            try server.pipeline.syncOperations.addHandlers([try OpenSSLTLSHandler(context: serverContext), serverRecorder])
            try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
        }
    }

    @Test func backToBackHandshakeHoldsEarlyWritesAndDeliversPlaintext() throws {
        let (clientContext, serverContext) = try contexts()
        let pair = try BackToBack(client: clientContext, server: serverContext, serverName: "localhost")
        let (client, server, clientRecorder, serverRecorder) = (pair.client, pair.server, pair.clientRecorder, pair.serverRecorder)

        // Written before the handshake is done: held, then sent encrypted.
        client.writeAndFlush(ByteBuffer(string: "early data"), promise: nil)
        try interact(client, server)
        #expect(clientRecorder.negotiated == ["http/1.1"])
        #expect(serverRecorder.negotiated == ["http/1.1"])
        #expect(serverRecorder.received == Array("early data".utf8))

        server.writeAndFlush(ByteBuffer(string: "reply"), promise: nil)
        try interact(client, server)
        #expect(clientRecorder.received == Array("reply".utf8))
        #expect(clientRecorder.errors.isEmpty && serverRecorder.errors.isEmpty)

        // close sends close_notify; the peer answers and both end up closed.
        client.close(promise: nil)
        try interact(client, server)
        #expect(!server.isActive)
        _ = try? client.finish()
        _ = try? server.finish()
    }

    /// A bare EOF (no close_notify) while the session is open is told to the pipeline before the EOF itself; one
    /// after close_notify is not. This is what lets a relay tell a body cut short from one that ended.
    @Test func anEOFWithoutCloseNotifyIsToldBeforeTheEOF() throws {
        let (clientContext, serverContext) = try contexts()
        let pair = try BackToBack(client: clientContext, server: serverContext, serverName: "localhost")
        try interact(pair.client, pair.server)
        #expect(pair.clientRecorder.negotiated == ["http/1.1"])
        pair.client.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        try pair.client.close().wait()
        #expect(pair.clientRecorder.ends == ["unclean", "inputClosed", "inactive"])

        // The server sends close_notify: the client's EOF after it is a clean one.
        let clean = try BackToBack(client: clientContext, server: serverContext, serverName: "localhost")
        try interact(clean.client, clean.server)
        clean.server.close(promise: nil)
        try interact(clean.client, clean.server)
        #expect(!clean.client.isActive)
        #expect(clean.clientRecorder.ends == ["inactive"])
        #expect(clean.clientRecorder.errors.isEmpty)
        _ = try? pair.server.finish()
    }

    /// `TLSCloseWithoutNotify` sends what was written and closes without close_notify: the peer sees the data,
    /// then an EOF it is told is unclean.
    @Test func closeWithoutNotifySendsTheDataButNoCloseNotify() throws {
        let (clientContext, serverContext) = try contexts()
        let pair = try BackToBack(client: clientContext, server: serverContext, serverName: "localhost")
        try interact(pair.client, pair.server)
        pair.server.write(ByteBuffer(string: "partial body"), promise: nil)
        pair.server.pipeline.triggerUserOutboundEvent(TLSCloseWithoutNotify(), promise: nil)
        #expect(!pair.server.isActive)
        try interact(pair.client, pair.server)
        #expect(pair.clientRecorder.received == Array("partial body".utf8))
        #expect(pair.clientRecorder.ends.isEmpty)  // no close_notify arrived: the client is still open
        pair.client.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(pair.clientRecorder.ends == ["unclean", "inputClosed"])
        _ = try? pair.client.finish()
    }

    /// Data decrypted before a record that fails goes up before the error. A handler that answers data as it
    /// arrives (as HTTP/2 does with WINDOW_UPDATE) writes while it goes up: that write fails as on a closed
    /// channel, so the error reported is the read's, not a bare "TLS write failed".
    @Test func dataBeforeABadRecordGoesUpFirstAndTheReadErrorStands() throws {
        final class Answerer: ChannelInboundHandler {
            typealias InboundIn = ByteBuffer
            typealias OutboundOut = ByteBuffer
            func channelRead(context: ChannelHandlerContext, data: NIOAny) {
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "ack")), promise: nil)
                context.fireChannelRead(data)
            }
        }
        let (clientContext, serverContext) = try contexts()
        let pair = try BackToBack(client: clientContext, server: serverContext, serverName: "localhost")
        try interact(pair.client, pair.server)
        try pair.client.pipeline.syncOperations.addHandler(Answerer(), position: .before(pair.clientRecorder))
        pair.server.writeAndFlush(ByteBuffer(string: "body so far"), promise: nil)
        var bytes = try #require(try pair.server.readOutbound(as: ByteBuffer.self))
        while var more = try pair.server.readOutbound(as: ByteBuffer.self) { bytes.writeBuffer(&more) }
        bytes.writeBytes([0x17, 0x03, 0x03, 0x00, 0x20] + [UInt8](repeating: 0, count: 32))  // fails to decrypt
        _ = try? pair.client.writeInbound(bytes)  // the data and the bad record in one read (its error is recorded)
        #expect(pair.clientRecorder.received == Array("body so far".utf8))
        #expect(pair.clientRecorder.receivedBeforeError == [11])
        let error = pair.clientRecorder.errors.first.map { "\($0)" } ?? ""
        #expect(error.hasPrefix("TLS read failed"), "\(pair.clientRecorder.errors)")
        #expect(!pair.client.isActive)
        _ = try? pair.server.finish()
    }

    @Test func anUntrustedServerFailsTheHandshakeWithTheReason() throws {
        let (clientContext, serverContext) = try contexts(trust: pki.otherCA)
        let pair = try BackToBack(client: clientContext, server: serverContext, serverName: "localhost")
        let (client, server, recorder) = (pair.client, pair.server, pair.clientRecorder)
        try? interact(client, server)
        #expect(recorder.negotiated.isEmpty)
        let error = try #require(recorder.errors.first as? OpenSSLError)
        #expect(error.verifyResult == "unable to get local issuer certificate")
        #expect(!client.isActive)
        _ = try? server.finish()
    }

    @Test func theServerWaitsForAnAsynchronousCertificateChoice() throws {
        let alpha = try OpenSSLCertifiedKey(chainFile: pki.leafChain("alpha.test"), keyFile: pki.leafKey("alpha.test"))
        let pending = NIOLockedValueBox<[(String?, EventLoopPromise<OpenSSLCertifiedKey?>)]>([])
        var configuration = OpenSSLContext.Configuration(role: .server)
        configuration.certificateProvider = { name, eventLoop in
            let promise = eventLoop.makePromise(of: OpenSSLCertifiedKey?.self)
            pending.withLockedValue { $0.append((name, promise)) }
            return promise.futureResult
        }
        let serverContext = try OpenSSLContext(configuration: configuration)
        let (clientContext, _) = try contexts()
        let pair = try BackToBack(client: clientContext, server: serverContext, serverName: "alpha.test")
        let (client, server, clientRecorder, serverRecorder) = (pair.client, pair.server, pair.clientRecorder, pair.serverRecorder)
        let serverReads = ReadCounter()
        try server.pipeline.syncOperations.addHandler(serverReads, position: .first)
        client.writeAndFlush(ByteBuffer(string: "hello"), promise: nil)
        server.writeAndFlush(ByteBuffer(string: "held by the server"), promise: nil)
        try interact(client, server)

        // Asked once, for the SNI; nothing completes until the answer comes, and nothing more is read meanwhile.
        let asked = pending.withLockedValue { $0 }
        #expect(asked.map { $0.0 } == ["alpha.test"])
        #expect(clientRecorder.negotiated.isEmpty && serverRecorder.negotiated.isEmpty)
        server.pipeline.read()
        server.pipeline.read()
        #expect(serverReads.reads == 0)

        asked.first?.1.succeed(alpha)
        #expect(serverReads.reads == 1)  // the withheld read, asked for once
        try interact(client, server)
        #expect(clientRecorder.negotiated.count == 1 && serverRecorder.negotiated.count == 1)
        #expect(serverRecorder.received == Array("hello".utf8))
        #expect(clientRecorder.received == Array("held by the server".utf8))
        #expect(clientRecorder.errors.isEmpty && serverRecorder.errors.isEmpty)
        _ = try? client.finish()
        _ = try? server.finish()
    }

    @Test func aFailedCertificateChoiceAlertsTheClientAndReportsTheReason() throws {
        struct MintingFailed: Error, CustomStringConvertible { var description: String { "CA key unreadable" } }
        var configuration = OpenSSLContext.Configuration(role: .server)
        configuration.certificateProvider = { _, eventLoop in eventLoop.makeFailedFuture(MintingFailed()) }
        let serverContext = try OpenSSLContext(configuration: configuration)
        let (clientContext, _) = try contexts()
        let pair = try BackToBack(client: clientContext, server: serverContext, serverName: "alpha.test")
        let (client, server, clientRecorder, serverRecorder) = (pair.client, pair.server, pair.clientRecorder, pair.serverRecorder)
        try? interact(client, server)
        let serverError = try #require(serverRecorder.errors.first as? OpenSSLError)
        #expect("\(serverError)".contains("choosing a certificate for alpha.test"))
        #expect("\(serverError)".contains("CA key unreadable"))
        // The client's error names the alert it got (internal_error, what OpenSSL sends when the callback fails);
        // the server, which sent it, got none.
        #expect((clientRecorder.errors.first as? OpenSSLError)?.peerAlert == 80, "\(clientRecorder.errors)")
        #expect(serverError.peerAlert == nil)
        #expect(!client.isActive && !server.isActive)
    }

    /// A server handler behind a handshake gate, and a client, on one embedded loop; the server's certificate comes
    /// from a provider that notes being asked (which OpenSSL does only once it has processed the ClientHello).
    struct Gated {
        let client: EmbeddedChannel
        let server: EmbeddedChannel
        let gate: EventLoopPromise<String?>
        let clientRecorder = PlaintextRecorder()
        let serverRecorder = PlaintextRecorder()
        let asked = NIOLockedValueBox<[String?]>([])

        /// With `leafLater`, the certificate waits for this promise (the handshake stays paused in its callback).
        let leafLater: EventLoopPromise<OpenSSLCertifiedKey?>?

        init(_ test: OpenSSLTLSHandlerTests, perConnectionALPN: Bool = true, leafLater: Bool = false) throws {
            let loop = EmbeddedEventLoop()
            client = EmbeddedChannel(loop: loop)
            server = EmbeddedChannel(loop: loop)
            gate = loop.makePromise(of: String?.self)
            let leaf = try OpenSSLCertifiedKey(chainFile: test.pki.serverChain, keyFile: test.pki.serverKey)
            var configuration = OpenSSLContext.Configuration(role: .server)
            configuration.alpnChosenPerConnection = perConnectionALPN
            configuration.alpn = perConnectionALPN ? [] : ["http/1.1"]
            let asked = self.asked
            let later = leafLater ? loop.makePromise(of: OpenSSLCertifiedKey?.self) : nil
            self.leafLater = later
            configuration.certificateProvider = { name, eventLoop in
                asked.withLockedValue { $0.append(name) }
                return later?.futureResult ?? eventLoop.makeSucceededFuture(leaf)
            }
            let (clientContext, _) = try test.contexts()
            try client.pipeline.syncOperations.addHandlers([
                try OpenSSLTLSHandler(context: clientContext, serverName: "localhost"), clientRecorder,
            ])
            try server.pipeline.syncOperations.addHandlers([
                try OpenSSLTLSHandler(
                    context: try OpenSSLContext(configuration: configuration), alpnAnswer: "http/1.1",
                    handshakeGate: gate.futureResult),
                serverRecorder,
            ])
            try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
        }

        /// Everything the server has written so far.
        func serverOutput() throws -> [UInt8] {
            var bytes: [UInt8] = []
            while let buffer = try server.readOutbound(as: ByteBuffer.self) { bytes += Array(buffer.readableBytesView) }
            return bytes
        }
    }

    @Test func aGatedServerRunsTheHandshakeButSendsNothingUntilTheGateOpens() throws {
        let pair = try Gated(self)
        pair.client.writeAndFlush(ByteBuffer(string: "request"), promise: nil)
        try interact(pair.client, pair.server)
        // The ClientHello was processed (the certificate was asked for), and not a byte went back.
        #expect(pair.asked.withLockedValue { $0 } == ["localhost"])
        #expect(try pair.serverOutput().isEmpty)
        #expect(pair.clientRecorder.negotiated.isEmpty && pair.serverRecorder.negotiated.isEmpty)

        pair.gate.succeed("http/1.1")
        try interact(pair.client, pair.server)
        #expect(pair.clientRecorder.negotiated == ["http/1.1"] && pair.serverRecorder.negotiated == ["http/1.1"])
        #expect(pair.asked.withLockedValue { $0 }.count == 1)
        #expect(pair.serverRecorder.received == Array("request".utf8))
        pair.server.writeAndFlush(ByteBuffer(string: "response"), promise: nil)
        try interact(pair.client, pair.server)
        #expect(pair.clientRecorder.received == Array("response".utf8))
        #expect(pair.clientRecorder.errors.isEmpty && pair.serverRecorder.errors.isEmpty)
        _ = try? pair.client.finish()
        _ = try? pair.server.finish()
    }

    @Test func aGateAskingForAnotherALPNAnswerMakesTheHandshakeAgain() throws {
        let pair = try Gated(self)
        pair.client.writeAndFlush(ByteBuffer(string: "request"), promise: nil)
        try interact(pair.client, pair.server)
        #expect(try pair.serverOutput().isEmpty)
        // The upstream chose no protocol: the client's handshake is made again from its ClientHello, without ALPN.
        pair.gate.succeed(nil)
        try interact(pair.client, pair.server)
        #expect(pair.asked.withLockedValue { $0 } == ["localhost", "localhost"])
        #expect(pair.clientRecorder.negotiated == [nil] && pair.serverRecorder.negotiated == [nil])
        #expect(pair.serverRecorder.received == Array("request".utf8))
        pair.server.writeAndFlush(ByteBuffer(string: "response"), promise: nil)
        try interact(pair.client, pair.server)
        #expect(pair.clientRecorder.received == Array("response".utf8))
        #expect(pair.clientRecorder.errors.isEmpty && pair.serverRecorder.errors.isEmpty)
        _ = try? pair.client.finish()
        _ = try? pair.server.finish()
    }

    @Test func aGateHoldsTheHandshakeWhateverTheContextsALPN() throws {
        // A context that answers ALPN itself: the gate's answer does not count, but it still holds everything back.
        let pair = try Gated(self, perConnectionALPN: false)
        try interact(pair.client, pair.server)
        #expect(pair.asked.withLockedValue { $0 }.count == 1)
        // Nothing went back: the client is still waiting for a ServerHello.
        #expect(pair.clientRecorder.negotiated.isEmpty && pair.serverRecorder.negotiated.isEmpty)
        #expect(try pair.serverOutput().isEmpty)
        pair.gate.succeed(nil)
        try interact(pair.client, pair.server)
        #expect(pair.clientRecorder.negotiated == ["http/1.1"] && pair.serverRecorder.negotiated == ["http/1.1"])
        #expect(pair.asked.withLockedValue { $0 }.count == 1)
        _ = try? pair.client.finish()
        _ = try? pair.server.finish()
    }

    @Test func aHandshakeThatCannotBeMadeAgainIsWithheld() throws {
        let pair = try Gated(self, leafLater: true)
        try interact(pair.client, pair.server)
        #expect(pair.asked.withLockedValue { $0 }.count == 1)
        // More than the gate keeps a copy of: the handshake cannot be made again from the client's bytes.
        try pair.server.writeInbound(ByteBuffer(repeating: 0x17, count: OpenSSLTLSHandler.gatedInputLimit + 1))
        pair.gate.succeed(nil)
        #expect(try pair.serverOutput() == OpenSSLTLSHandler.internalErrorAlert)
        let error = try #require(pair.serverRecorder.errors.first as? TLSHandshakeWithheld)
        #expect("\(error)".contains("more than 65536 bytes"))
        #expect(!pair.server.isActive)
        pair.leafLater?.succeed(nil)
        #expect(try pair.serverOutput().isEmpty)
    }

    @Test func aFailedGateSendsOnlyAnAlertAndReportsWhy() throws {
        struct UpstreamRefused: Error, CustomStringConvertible { var description: String { "upstream certificate expired" } }
        let pair = try Gated(self)
        try interact(pair.client, pair.server)
        #expect(pair.asked.withLockedValue { $0 }.count == 1)
        pair.gate.fail(UpstreamRefused())
        // Not the ServerHello, not the certificate: only the alert.
        let output = try pair.serverOutput()
        #expect(output == OpenSSLTLSHandler.internalErrorAlert)
        #expect(!pair.server.isActive)
        let serverError = try #require(pair.serverRecorder.errors.first as? TLSHandshakeWithheld)
        #expect("\(serverError)".contains("upstream certificate expired"))
        try pair.client.writeInbound(ByteBuffer(bytes: output))
        let clientError = try #require(pair.clientRecorder.errors.first as? OpenSSLError)
        #expect("\(clientError)".contains("internal error"))
        #expect(pair.clientRecorder.negotiated.isEmpty)
    }

    /// An upstream that refused the handshake over something the client chose (its name, its ALPN offer): the client
    /// is refused with that same alert; over anything else (the proxy's own versions or suites), with internal_error.
    @Test(arguments: [(UInt8(112), UInt8(112)), (120, 120), (49, 49), (40, 80), (70, 80), (80, 80)])
    func aGateFailedByTheUpstreamsAlertRelaysOnlyTheClientsOwn(upstream: UInt8, relayed: UInt8) throws {
        let pair = try Gated(self)
        try interact(pair.client, pair.server)
        pair.gate.fail(OpenSSLError(operation: "TLS handshake", entries: ["alert \(upstream)"], peerAlert: upstream))
        let output = try pair.serverOutput()
        #expect(output == OpenSSLTLSHandler.internalErrorAlert.dropLast() + [relayed])
        try pair.client.writeInbound(ByteBuffer(bytes: output))
        #expect((pair.clientRecorder.errors.first as? OpenSSLError)?.peerAlert == relayed, "\(pair.clientRecorder.errors)")
        #expect(!pair.server.isActive)
    }

    @Test func aHandshakeFailingBehindTheGateSendsOurAlertNotOpenSSLs() throws {
        let pair = try Gated(self)
        try interact(pair.client, pair.server)
        #expect(pair.asked.withLockedValue { $0 }.count == 1)
        // A record the handshake cannot take: OpenSSL's own alert would follow the flight it made, encrypted.
        try pair.server.writeInbound(ByteBuffer(bytes: [0x17, 0x03, 0x03, 0x00, 0x05] + Array("hello".utf8)))
        #expect(try pair.serverOutput() == OpenSSLTLSHandler.internalErrorAlert)
        #expect(pair.serverRecorder.errors.first is TLSHandshakeWithheld)
        #expect(!pair.server.isActive)
        // The gate opening late changes nothing.
        pair.gate.succeed("http/1.1")
        #expect(try pair.serverOutput().isEmpty)
    }

    @Test func talksToOpenSSLSServer() async throws {
        // A real peer: `openssl s_server -www` answers GET with a status page.
        let port = try Self.freePort()
        let server = try ChildProcess("/usr/bin/openssl", [
            "s_server", "-accept", "127.0.0.1:\(port)", "-cert", pki.serverChain, "-key", pki.serverKey, "-www",
            "-alpn", "http/1.1",
        ])
        defer { server.signal(SIGKILL) }  // the watchdog below keeps it referenced: release alone is too late
        // A watchdog kills it after 600 s, which also ends a wait for its close below. (Generous: while the whole
        // suite runs on two busy cores, blocking tests have held this async test's threads for over three minutes.)
        DispatchQueue.global().asyncAfter(deadline: .now() + 600) { [weak server] in server?.signal(SIGKILL) }
        // s_server prints ACCEPT once it listens.
        _ = try server.waitForLine(timeout: 20) { $0.contains("ACCEPT") }

        let (clientContext, _) = try contexts()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let recorder = try await loop.submit { NIOLoopBoundBox<PlaintextRecorder?>(nil, eventLoop: loop) }.get()
        let channel = try await ClientBootstrap(group: recorder.eventLoop)
            .channelInitializer { channel in
                do {
                    let handler = try OpenSSLTLSHandler(context: clientContext, serverName: "localhost")
                    let record = PlaintextRecorder()
                    recorder.value = record
                    try channel.pipeline.syncOperations.addHandlers([handler, record])
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        try await channel.writeAndFlush(ByteBuffer(string: "GET / HTTP/1.0\r\n\r\n"))
        try await channel.closeFuture.get()  // s_server closes after the page
        let (text, negotiated, errors) = try await recorder.eventLoop.submit {
            (String(decoding: recorder.value?.received ?? [], as: UTF8.self), recorder.value?.negotiated ?? [], recorder.value?.errors.count ?? -1)
        }.get()
        #expect(negotiated == ["http/1.1"])
        #expect(text.hasPrefix("HTTP/1.0 200 ok"), "\(text.prefix(200))")
        #expect(errors == 0)
    }

    @Test func opensslSClientVerifiesOurServer() async throws {
        let (_, serverContext) = try contexts()
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                do {
                    try channel.pipeline.syncOperations.addHandler(try OpenSSLTLSHandler(context: serverContext))
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        let port = try #require(listener.localAddress?.port)
        // Its stdin is /dev/null, EOF at once: handshake, print the summary, leave.
        let client = try runCommand("/usr/bin/openssl", [
            "s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", pki.ca, "-verify_return_error",
            "-servername", "localhost", "-verify_hostname", "localhost", "-alpn", "h2,http/1.1",
        ], timeout: 30)
        let text = client.stdout + "\n" + client.stderr
        #expect(text.contains("Verify return code: 0 (ok)"), "\(text)")
        #expect(text.contains("ALPN protocol: http/1.1"), "\(text)")
        #expect(text.contains("TLSv1.3"))
        // OpenSSL's client offers AES-256-GCM first; the server's order (AES-128-GCM first) decides.
        #expect(text.contains("Cipher is TLS_AES_128_GCM_SHA256"), "\(text)")
        // ...unless the client puts ChaCha20 first (no AES instructions): then it gets ChaCha20.
        let chacha = try runCommand("/usr/bin/openssl", [
            "s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", pki.ca, "-verify_return_error",
            "-servername", "localhost", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
        ], timeout: 30)
        #expect(chacha.stdout.contains("Cipher is TLS_CHACHA20_POLY1305_SHA256"), "\(chacha.stdout)")
        // TLS 1.2 too: AES-128-GCM first, though OpenSSL's client offers AES-256-GCM first.
        let tls12 = try runCommand("/usr/bin/openssl", [
            "s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", pki.ca, "-verify_return_error",
            "-servername", "localhost", "-tls1_2",
        ], timeout: 30)
        #expect(tls12.stdout.contains("Cipher is ECDHE-ECDSA-AES128-GCM-SHA256"), "\(tls12.stdout)")
        try await listener.close()
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw CocoaError(.fileWriteUnknown) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

@Suite struct OpenSSLTLSStateMachineTests {
    typealias Machine = OpenSSLTLSHandler.StateMachine

    @Test func aCertificateChoicePausesTheHandshake() {
        var machine = Machine()
        _ = machine.channelActive()
        #expect(machine.handshakeStepped(.needsCertificate(serverName: "a.test")) == .chooseCertificate(serverName: "a.test"))
        #expect(machine.bytesArrived() == .none)
        #expect(machine.write() == .bufferWrite)
        #expect(machine.certificateChosen() == .stepHandshake)
        #expect(machine.certificateChosen() == .none)

        var closed = Machine()
        _ = closed.channelActive()
        _ = closed.handshakeStepped(.needsCertificate(serverName: nil))
        #expect(closed.close() == .closeNow)
        #expect(closed.certificateChosen() == .none)
    }

    @Test func aGateHoldsTheHandshakesOutputUntilItOpens() {
        var machine = Machine(gated: true)
        #expect(machine.holdsHandshakeOutput)
        #expect(machine.channelActive() == .stepHandshake)
        #expect(machine.handshakeStepped(.needsCertificate(serverName: "a.test")) == .chooseCertificate(serverName: "a.test"))
        #expect(machine.certificateChosen() == .stepHandshake)
        #expect(machine.handshakeStepped(.incomplete) == .none)
        #expect(machine.gateOpened() == .sendHandshakeOutput)
        #expect(!machine.holdsHandshakeOutput)
        #expect(machine.gateOpened() == .none)
        #expect(machine.restartOpened() == .none)
        #expect(machine.handshakeStepped(.complete) == .completeHandshake)
        // Once open, failures are OpenSSL's to answer, as without a gate.
        let error = OpenSSLError(operation: "reading", entries: ["bad record mac"])
        #expect(machine.readFailed(error) == .fail(error))
    }

    @Test func aClosedGateTurnsEveryHandshakeEndIntoOurAlertOrASilentClose() {
        let upstream = OpenSSLError(operation: "completing the handshake", entries: ["upstream failed"])
        var refused = Machine(gated: true)
        _ = refused.channelActive()
        #expect(refused.gateFailed(upstream) == .refuseHandshake(upstream))
        #expect(refused.state == .closed)
        #expect(refused.gateOpened() == .none)

        let handshake = OpenSSLError(operation: "handshake", entries: ["unexpected message"])
        var failed = Machine(gated: true)
        _ = failed.channelActive()
        #expect(failed.handshakeStepped(.failed(handshake)) == .refuseHandshake(handshake))
        #expect(failed.gateFailed(upstream) == .none)

        var again = Machine(gated: true)
        _ = again.channelActive()
        _ = again.handshakeStepped(.needsCertificate(serverName: nil))
        #expect(again.restartOpened() == .stepHandshake)
        #expect(!again.holdsHandshakeOutput && again.state == .handshaking)

        var peerGone = Machine(gated: true)
        _ = peerGone.channelActive()
        #expect(peerGone.peerClosed() == .closeNow)

        var finishedEarly = Machine(gated: true)
        _ = finishedEarly.channelActive()
        guard case .refuseHandshake = finishedEarly.handshakeStepped(.complete) else {
            Issue.record("a handshake finished behind a closed gate must be refused")
            return
        }

        // Without a gate nothing changes.
        var plain = Machine()
        #expect(!plain.holdsHandshakeOutput)
        _ = plain.channelActive()
        #expect(plain.gateOpened() == .none)
        #expect(plain.gateFailed(upstream) == .none)
        #expect(plain.handshakeStepped(.failed(handshake)) == .fail(handshake))
    }

    @Test func writesWaitForTheHandshake() {
        var machine = Machine()
        #expect(machine.write() == .bufferWrite)
        #expect(machine.channelActive() == .stepHandshake)
        #expect(machine.handshakeStepped(.incomplete) == .none)
        #expect(machine.write() == .bufferWrite)
        #expect(machine.bytesArrived() == .stepHandshake)
        #expect(machine.handshakeStepped(.complete) == .completeHandshake)
        #expect(machine.write() == .encryptWrite)
        #expect(machine.bytesArrived() == .decrypt)
    }

    @Test func closeSendsCloseNotifyOnlyOnceActive() {
        var early = Machine()
        _ = early.channelActive()
        #expect(early.close() == .closeNow)
        #expect(early.write() == .failWrite)

        var active = Machine()
        _ = active.channelActive()
        _ = active.handshakeStepped(.complete)
        #expect(active.close() == .sendCloseNotifyAndClose)
        #expect(active.write() == .failWrite)
    }

    @Test func aFailedHandshakeFailsOnceAndPeerCloseIsAnswered() {
        var failing = Machine()
        _ = failing.channelActive()
        let error = OpenSSLError(operation: "TLS handshake", entries: [], verifyResult: "certificate has expired")
        #expect(failing.handshakeStepped(.failed(error)) == .fail(error))
        #expect(failing.handshakeStepped(.failed(error)) == .none)

        var closing = Machine()
        _ = closing.channelActive()
        _ = closing.handshakeStepped(.complete)
        #expect(closing.peerClosed() == .sendCloseNotifyAndClose)
        #expect(closing.peerClosed() == .none)
    }

    @Test func anEOFIsUncleanOnlyWhileTheSessionIsOpenAndIsToldOnce() {
        var open = Machine()
        _ = open.channelActive()
        #expect(open.transportEnded() == .none)  // during the handshake: the handshake fails on its own
        _ = open.handshakeStepped(.complete)
        #expect(open.transportEnded() == .notePeerClosedWithoutNotify)
        #expect(open.transportEnded() == .none)
        #expect(open.channelInactive() == .none)

        var inactive = Machine()
        _ = inactive.channelActive()
        _ = inactive.handshakeStepped(.complete)
        #expect(inactive.channelInactive() == .notePeerClosedWithoutNotify)

        var notified = Machine()
        _ = notified.channelActive()
        _ = notified.handshakeStepped(.complete)
        _ = notified.peerClosed()  // close_notify arrived
        #expect(notified.transportEnded() == .none)
        #expect(notified.channelInactive() == .none)
    }

    @Test func closeWithoutNotifyFlushesOnlyAnOpenSession() {
        var active = Machine()
        _ = active.channelActive()
        _ = active.handshakeStepped(.complete)
        #expect(active.closeWithoutNotify() == .flushAndCloseWithoutNotify)
        #expect(active.write() == .failWrite)
        #expect(active.channelInactive() == .none)  // the proxy closed it: nothing to tell

        var early = Machine()
        _ = early.channelActive()
        #expect(early.closeWithoutNotify() == .closeNow)

        var closing = Machine()
        _ = closing.channelActive()
        _ = closing.handshakeStepped(.complete)
        _ = closing.close()
        #expect(closing.closeWithoutNotify() == .closeNow)
    }
}

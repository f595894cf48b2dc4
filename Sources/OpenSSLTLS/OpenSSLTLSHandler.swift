import NIOCore
import NIOTLS

/// Fired up the pipeline when the peer's transport ends (EOF or the channel closing) while the TLS session is
/// still open: no close_notify came first (RFC 8446 §6.1), so data whose end is the end of the connection, such
/// as an HTTP/1.1 body with no length, may have been cut short by someone other than the peer. Fired once, before
/// the `ChannelEvent.inputClosed` or `channelInactive` it explains.
public struct TLSClosedWithoutNotify: Sendable, Hashable {
    public init() {}
}

/// Sent down the pipeline (`triggerUserOutboundEvent`): close the channel after what was written, without
/// close_notify, so the peer sees an end it cannot take for a complete one (for example when a relayed body
/// was cut short). Before the handshake has finished it closes at once.
public struct TLSCloseWithoutNotify: Sendable, Hashable {
    public init() {}
}

/// A server's handshake that ended behind its gate (`OpenSSLTLSHandler`'s `handshakeGate`): the peer was sent nothing
/// of it (not the certificate), only a fatal alert. Fired up the pipeline in place of the `OpenSSLError` it carries.
public struct TLSHandshakeWithheld: Error, Sendable, Hashable, CustomStringConvertible {
    public var error: OpenSSLError
    public init(_ error: OpenSSLError) { self.error = error }
    public var description: String { error.description }
}

/// TLS on a channel, client or server: ciphertext below, plaintext above. Fires
/// `TLSUserEvent.handshakeCompleted(negotiatedProtocol:)` when the handshake is done; writes made before then
/// are held and sent after it. A failed handshake or a broken record reaches the pipeline as an
/// `OpenSSLError` (with the certificate verification result when that is what failed) and closes the channel.
public final class OpenSSLTLSHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private var connection: OpenSSLConnection
    private let certificateProvider: OpenSSLContext.CertificateProvider?
    private let handshakeGate: EventLoopFuture<String?>?
    private var machine: StateMachine
    /// Behind a gate: the ALPN answer the handshake is being made with, a copy of every byte the peer sent so far (to
    /// make the handshake again with another answer), and how to make the connection again.
    private var gatedAnswer: String?
    private var gatedInput: ByteBuffer?
    private var remake: (() throws(OpenSSLError) -> OpenSSLConnection)?
    /// The context answers ALPN per connection (`alpnAnswer`): only then does the gate's answer count.
    private let answersALPNPerConnection: Bool
    /// The peer's bytes kept behind a gate, at most: a ClientHello is far smaller. More than this and the
    /// handshake cannot be made again (it is refused should the gate ask for that).
    static let gatedInputLimit = 65536
    /// Counts the connections made for this channel: an answer from the certificate provider to an earlier one is
    /// dropped.
    private var generation = 0
    /// A read asked for while the handshake waited for its certificate (see `read(context:)`).
    private var readWithheld = false
    private var heldWrites: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    /// Plaintext written since the last flush, and the promises of those writes.
    private var pendingPlaintext: ByteBuffer?
    private var pendingPromises: [EventLoopPromise<Void>] = []
    /// An empty plaintext buffer kept for the next read.
    private var spareBuffer: ByteBuffer?
    /// The capacity of the next buffer decrypted into: the size of the last delivery.
    private var plaintextCapacity = 16384
    private static let smallestPlaintextBuffer = 1024
    private static let largestSpareBuffer = 16384
    /// Ciphertext was written below and not flushed yet.
    private var unflushed = false
    /// Writes this large are not gathered (a TLS record holds at most 16 KiB anyway).
    private static let coalescingLimit = 8192
    private var closePromise: EventLoopPromise<Void>?
    /// The channel's allocator, read once: `context.channel.allocator` goes through the channel existential and an
    /// event-loop check on every call, and buffers are asked for several times per record.
    private var allocator = ByteBufferAllocator()

    /// - Parameter serverName: client only: the name or IP to verify (names are also sent as SNI).
    /// - Parameters:
    ///   - serverName: client only: the name or IP to verify (names are also sent as SNI).
    ///   - certificateProvider: server only: chooses this connection's certificate in place of the context's
    ///     provider (for example once an upstream is verified); its failure refuses the client with an alert.
    ///   - alpn: client only: the protocols this connection offers, in place of the context's (`[]`: none).
    ///   - alpnAnswer: server with `alpnChosenPerConnection` only: the protocol to answer (nil: no ALPN).
    ///   - handshakeGate: server only: the handshake runs as the peer's messages arrive, but nothing it makes for the
    ///     peer (not a byte of the ServerHello, the certificate or a resumed session's Finished) is sent until this
    ///     succeeds. With `alpnChosenPerConnection` it succeeds with the ALPN answer the handshake must carry: when
    ///     that is not `alpnAnswer`, what was made is dropped and the handshake is made again, from the peer's bytes,
    ///     with that answer (the peer has seen nothing of the first). If the gate fails, what was made is dropped,
    ///     the peer gets a fatal internal_error alert, and the handshake fails with `TLSHandshakeWithheld`. Any other
    ///     failure before the gate opens ends the same way.
    public init(
        context: OpenSSLContext,
        serverName: String? = nil,
        certificateProvider: OpenSSLContext.CertificateProvider? = nil,
        alpn: [String]? = nil,
        alpnAnswer: String? = nil,
        sessionKey: String? = nil,
        handshakeGate: EventLoopFuture<String?>? = nil
    ) throws(OpenSSLError) {
        let isServer = context.configuration.role == .server
        self.connection = try OpenSSLConnection(
            context: context,
            serverName: serverName,
            choosesCertificate: isServer && certificateProvider != nil,
            alpn: isServer ? nil : alpn,
            sessionKey: isServer ? nil : sessionKey
        )
        if isServer && context.configuration.alpnChosenPerConnection {
            connection.answerALPN(with: alpnAnswer)
        }
        self.certificateProvider = isServer ? certificateProvider ?? context.configuration.certificateProvider : nil
        let gated = isServer && handshakeGate != nil
        self.handshakeGate = gated ? handshakeGate : nil
        self.machine = StateMachine(gated: gated)
        self.answersALPNPerConnection = context.configuration.alpnChosenPerConnection
        if gated && answersALPNPerConnection {
            gatedAnswer = alpnAnswer
            gatedInput = ByteBuffer()
            let choosesCertificate = certificateProvider != nil
            remake = { () throws(OpenSSLError) in
                try OpenSSLConnection(context: context, choosesCertificate: choosesCertificate)
            }
        }
    }

    public var negotiatedProtocol: String? { connection.negotiatedProtocol }
    /// Client: whether the handshake resumed a session.
    public var sessionReused: Bool { connection.sessionReused }
    /// Client, after a verified handshake: when the server was authenticated and the earliest notAfter of its
    /// certificates (`OpenSSLConnection.serverAuthentication`).
    public var serverAuthentication: (at: Int64, notAfter: Int64)? { connection.serverAuthentication }

    /// Server with `alpnChosenPerConnection`: the protocol to answer the client's ALPN offer with (nil: none).
    /// Takes effect if set before OpenSSL answers ALPN, which it does after the certificate callback.
    public func answerALPN(with protocolName: String?) {
        connection.answerALPN(with: protocolName)
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        allocator = context.channel.allocator
        if let handshakeGate {
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            handshakeGate.hop(to: context.eventLoop).whenComplete { result in
                let (handler, context) = loopBound.value
                switch result {
                case .success(let answer) where answer == handler.gatedAnswer || !handler.answersALPNPerConnection:
                    handler.gatedInput = nil
                    handler.perform(handler.machine.gateOpened(), context: context)
                case .success(let answer):
                    handler.makeHandshakeAgain(answering: answer, context: context)
                case .failure(let error):
                    let failure = OpenSSLError(operation: "completing the handshake", entries: ["\(error)"])
                    if let alert = (error as? OpenSSLError)?.peerAlert, Self.relayedAlerts.contains(alert) {
                        handler.refusalAlert = alert
                    }
                    handler.perform(handler.machine.gateFailed(failure), context: context)
                }
            }
        }
        if context.channel.isActive {
            perform(machine.channelActive(), context: context)
        }
    }

    public func channelActive(context: ChannelHandlerContext) {
        perform(machine.channelActive(), context: context)
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        perform(machine.channelInactive(), context: context)
        failHeldWrites(ChannelError.ioOnClosedChannel)
        failPendingWrites(ChannelError.ioOnClosedChannel)
        context.fireChannelInactive()
    }

    /// While the handshake waits for its certificate (minted meanwhile, perhaps on another event loop), nothing
    /// more is read: OpenSSL consumes nothing then, and a client that kept sending would fill memory. The read is
    /// asked for again once the certificate is chosen.
    public func read(context: ChannelHandlerContext) {
        if machine.isChoosingCertificate {
            readWithheld = true
        } else {
            context.read()
        }
    }

    /// The handshake goes on with the certificate chosen (or refused), and a read withheld meanwhile is asked for.
    private func certificateSettled(context: ChannelHandlerContext) {
        perform(machine.certificateChosen(), context: context)
        resumeWithheldRead(context: context)
    }

    /// Asks for the read withheld while the handshake waited for its certificate, once it no longer waits.
    private func resumeWithheldRead(context: ChannelHandlerContext) {
        guard readWithheld, !machine.isChoosingCertificate else { return }
        readWithheld = false
        context.read()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        if machine.holdsHandshakeOutput, gatedInput != nil {
            if gatedInput!.readableBytes + bytes.readableBytes <= Self.gatedInputLimit {
                gatedInput!.writeImmutableBuffer(bytes)
            } else {
                gatedInput = nil
            }
        }
        connection.consumeFromNetwork(bytes)
        perform(machine.bytesArrived(), context: context)
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            perform(machine.transportEnded(), context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard event is TLSCloseWithoutNotify else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        awaitClose(promise)
        perform(machine.closeWithoutNotify(), context: context)
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data)
        switch machine.write() {
        case .bufferWrite:
            heldWrites.append((bytes, promise))
        case .encryptWrite:
            // Small writes are gathered until the flush, then encrypted in one go: a head, a body and an end
            // written back to back become one TLS record, not three. A large write is encrypted at once
            // (after what was gathered), so bulk data is not copied an extra time.
            if bytes.readableBytes >= Self.coalescingLimit {
                encryptPending(context: context)
                pendingPlaintext = bytes
                if let promise { pendingPromises.append(promise) }
                encryptPending(context: context)
            } else if pendingPlaintext == nil {
                pendingPlaintext = bytes
                if let promise { pendingPromises.append(promise) }
            } else {
                var bytes = bytes
                pendingPlaintext!.writeBuffer(&bytes)
                if let promise { pendingPromises.append(promise) }
                if pendingPlaintext!.readableBytes >= Self.coalescingLimit { encryptPending(context: context) }
            }
        default:
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    public func flush(context: ChannelHandlerContext) {
        encryptPending(context: context)
        sendToNetwork(context: context, flush: true)
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all else {
            context.close(mode: mode, promise: promise)
            return
        }
        awaitClose(promise)
        perform(machine.close(), context: context)
    }

    /// `promise` completes when the channel has closed (with any earlier close's).
    private func awaitClose(_ promise: EventLoopPromise<Void>?) {
        guard let promise else { return }
        if let existing = closePromise { existing.futureResult.cascade(to: promise) } else { closePromise = promise }
    }

    // MARK: actions

    private func perform(_ action: StateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none, .bufferWrite, .encryptWrite, .failWrite:
            break
        case .stepHandshake:
            let result = connection.doHandshake()
            sendToNetwork(context: context, flush: true)
            perform(machine.handshakeStepped(result), context: context)
        case .chooseCertificate(let serverName):
            chooseCertificate(serverName: serverName, context: context)
        case .completeHandshake:
            context.fireUserInboundEventTriggered(
                TLSUserEvent.handshakeCompleted(negotiatedProtocol: connection.negotiatedProtocol)
            )
            let held = heldWrites
            heldWrites = []
            for (bytes, promise) in held {
                write(context: context, data: wrapOutboundOut(bytes), promise: promise)
            }
            encryptPending(context: context)
            sendToNetwork(context: context, flush: true)
            // Application data may have arrived with the last handshake message.
            decrypt(context: context)
        case .decrypt:
            decrypt(context: context)
        case .sendCloseNotifyAndClose:
            encryptPending(context: context)  // written before the close: it goes before the close_notify
            connection.shutdown()
            sendToNetwork(context: context, flush: true)
            closeChannel(context: context)
        case .closeNow:
            closeChannel(context: context)
        case .notePeerClosedWithoutNotify:
            context.fireUserInboundEventTriggered(TLSClosedWithoutNotify())
        case .flushAndCloseWithoutNotify:
            encryptPending(context: context)
            sendToNetwork(context: context, flush: true)
            closeChannel(context: context)
        case .fail(let error):
            sendToNetwork(context: context, flush: true)  // the alert, if OpenSSL made one
            failHeldWrites(error)
            failPendingWrites(error)
            context.fireErrorCaught(error)
            closeChannel(context: context)
        case .sendHandshakeOutput:
            sendToNetwork(context: context, flush: true)
        case .refuseHandshake(let error):
            _ = connection.takeForNetwork(allocator: allocator)  // dropped, never sent
            var alert = allocator.buffer(capacity: Self.internalErrorAlert.count)
            alert.writeBytes(Self.internalErrorAlert.dropLast())
            alert.writeInteger(refusalAlert)
            context.writeAndFlush(wrapOutboundOut(alert), promise: nil)
            failHeldWrites(error)
            failPendingWrites(error)
            context.fireErrorCaught(TLSHandshakeWithheld(error))
            closeChannel(context: context)
        }
    }

    /// A plaintext TLS record with a fatal internal_error alert (RFC 8446 §6): what OpenSSL itself sends when its
    /// certificate callback fails, so a client refused at the gate sees what one refused there would.
    static let internalErrorAlert: [UInt8] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50]

    /// Alerts that, when the gate fails with one the other peer sent (an upstream refusing the handshake), are sent in
    /// place of internal_error: access_denied, unrecognized_name, no_application_protocol. Each answers something the
    /// client itself chose and the upstream was offered as it was (its server name, its ALPN protocols), so the client
    /// learns what it would have learnt from the upstream directly. Alerts about the proxy's own ClientHello (versions,
    /// cipher suites: handshake_failure, protocol_version) are not the client's to see.
    static let relayedAlerts: Set<UInt8> = [49, 112, 120]
    /// The alert description a refused handshake is refused with (`relayedAlerts`; else internal_error).
    private var refusalAlert: UInt8 = 80

    /// The gate asks for another ALPN answer than the handshake was made with: a new connection takes the peer's
    /// bytes again and answers with `answer`; the first one's output is dropped unsent.
    private func makeHandshakeAgain(answering answer: String?, context: ChannelHandlerContext) {
        guard let input = gatedInput, let remake else {
            let error = OpenSSLError(
                operation: "completing the handshake",
                entries: ["the peer sent more than \(Self.gatedInputLimit) bytes before the handshake could be made again"])
            perform(machine.gateFailed(error), context: context)
            return
        }
        gatedInput = nil
        let again: OpenSSLConnection
        do {
            again = try remake()
        } catch {
            perform(machine.gateFailed(error), context: context)
            return
        }
        let action = machine.restartOpened()
        guard action != .none else { return }
        again.answerALPN(with: answer)
        gatedAnswer = answer
        generation += 1
        connection = again
        connection.consumeFromNetwork(input)
        perform(action, context: context)
        // The handshake made again may not stop for a certificate: then nothing waits for the read any more.
        resumeWithheldRead(context: context)
    }

    private func chooseCertificate(serverName: String?, context: ChannelHandlerContext) {
        guard let certificateProvider else {
            connection.provideCertificate(nil)
            certificateSettled(context: context)
            return
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let generation = self.generation
        certificateProvider(serverName, context.eventLoop).hop(to: context.eventLoop).whenComplete { result in
            let (handler, context) = loopBound.value
            guard handler.generation == generation else { return }
            switch result {
            case .success(let certifiedKey):
                handler.connection.provideCertificate(certifiedKey)
                handler.certificateSettled(context: context)
            case .failure(let error):
                let failure = OpenSSLError(
                    operation: "choosing a certificate for \(serverName ?? "(no server name)")",
                    entries: ["\(error)"]
                )
                handler.connection.refuseCertificate(failure)
                handler.certificateSettled(context: context)
            }
        }
    }

    /// Decrypts everything available, passing it on in buffers of up to 64 KiB.
    private func decrypt(context: ChannelHandlerContext) {
        var delivered = false
        // A buffer left empty by the last call is used again: a read that yields no application data (a
        // handshake message, a session ticket) then allocates nothing.
        var plaintext = spareBuffer ?? allocator.buffer(capacity: plaintextCapacity)
        spareBuffer = nil
        func deliver(readingOn: Bool = true) {
            guard plaintext.readableBytes > 0 else { return }
            // The next buffer is as big as this delivery (within bounds): small for requests and responses
            // that fit one record, which malloc serves from its per-thread cache; big for bulk data.
            plaintextCapacity = min(max(plaintext.readableBytes, Self.smallestPlaintextBuffer), 65536)
            context.fireChannelRead(wrapInboundOut(plaintext))
            // `ByteBuffer()` allocates nothing: after the last delivery no buffer is needed.
            plaintext = readingOn ? allocator.buffer(capacity: plaintextCapacity) : ByteBuffer()
            delivered = true
        }
        // Before the session's end is acted on: what came ahead of it goes up first.
        func deliverBeforeEnd() {
            deliver()
            if delivered { context.fireChannelReadComplete() }
            delivered = false
        }
        readLoop: while true {
            switch connection.read(into: &plaintext) {
            case .read:
                if plaintext.readableBytes >= 65536 { deliver() }
                // Nothing left to decrypt: another SSL_read would only say so (saves a call per read).
                if !connection.hasBufferedInput { break readLoop }
            case .needMoreData:
                break readLoop
            case .closed:
                deliverBeforeEnd()
                perform(machine.peerClosed(), context: context)
                break readLoop
            case .failed(let error):
                // What was decrypted before the bad record goes on first, then the error. The machine learns of
                // the failure first: a write made while that data goes up fails as on a closed channel, rather than
                // reaching OpenSSL on a failed connection (whose error would replace this one).
                let action = machine.readFailed(error)
                deliverBeforeEnd()
                perform(action, context: context)
                break readLoop
            }
        }
        deliver(readingOn: false)
        // A buffer nothing was delivered from is kept for the next read, while small: a connection idle after
        // bulk data holds no 64 KiB buffer. Otherwise the next read allocates one as big as the last delivery.
        spareBuffer = plaintext.capacity > 0 && plaintext.capacity <= Self.largestSpareBuffer ? plaintext : nil
        if delivered { context.fireChannelReadComplete() }
        // TLS 1.3 session tickets and key updates produce bytes on read.
        sendToNetwork(context: context, flush: true)
    }

    /// Encrypts the plaintext gathered since the last flush; the ciphertext carries the writes' promises.
    private func encryptPending(context: ChannelHandlerContext) {
        guard let plaintext = pendingPlaintext else { return }
        pendingPlaintext = nil
        let promises = pendingPromises
        pendingPromises = []
        switch connection.write(plaintext) {
        case .success:
            var combined: EventLoopPromise<Void>? = nil
            if promises.count == 1 {
                combined = promises[0]
            } else if promises.count > 1 {
                let promise = context.eventLoop.makePromise(of: Void.self)
                promise.futureResult.whenComplete { result in
                    for waiting in promises { waiting.completeWith(result) }
                }
                combined = promise
            }
            sendToNetwork(context: context, flush: false, promise: combined)
        case .failure(let error):
            for promise in promises { promise.fail(error) }
            perform(machine.readFailed(error), context: context)
        }
    }

    /// Writes what OpenSSL produced; with `flush`, flushes if anything was written since the last flush (a
    /// flush with nothing to send would still walk the pipeline to the socket on every read).
    private func sendToNetwork(context: ChannelHandlerContext, flush: Bool, promise: EventLoopPromise<Void>? = nil) {
        // Behind a closed gate the handshake's output stays in the connection (it is sent when the gate opens).
        // Writes wait for the handshake, so no write's promise can come here meanwhile.
        guard !machine.holdsHandshakeOutput else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        if let ciphertext = connection.takeForNetwork(allocator: allocator) {
            context.write(wrapOutboundOut(ciphertext), promise: promise)
            unflushed = true
        } else if let promise {
            // Nothing to send for these writes (empty ones): their promise completes after the writes before them,
            // as a caller that counts what was written expects, not at once.
            context.write(wrapOutboundOut(allocator.buffer(capacity: 0)), promise: promise)
            unflushed = true
        }
        if flush && unflushed {
            unflushed = false
            context.flush()
        }
    }

    private func closeChannel(context: ChannelHandlerContext) {
        let promise = closePromise
        closePromise = nil
        context.close(mode: .all, promise: promise)
    }

    private func failPendingWrites(_ error: any Error) {
        pendingPlaintext = nil
        let promises = pendingPromises
        pendingPromises = []
        for promise in promises { promise.fail(error) }
    }

    private func failHeldWrites(_ error: any Error) {
        let held = heldWrites
        heldWrites = []
        for (_, promise) in held { promise?.fail(error) }
    }
}

@available(*, unavailable)
extension OpenSSLTLSHandler: Sendable {}

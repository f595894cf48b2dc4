internal import CSSL
public import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One TLS connection: the owner of an `SSL*` and its `ByteBufferBIO`, with no socket and no pipeline.
/// Bytes from the network go in with `consumeFromNetwork`, bytes for the network come out of
/// `takeForNetwork`; the TLS handler (next) drives it from a channel, and tests drive two of them in memory.
///
/// Not thread-safe: one owner (an event loop) uses it.
public final class OpenSSLConnection {
    public enum HandshakeResult: Sendable, Equatable {
        case complete
        /// Needs more bytes from the peer (after sending what `takeForNetwork` returns).
        case incomplete
        /// Server with a certificate provider: paused until `provideCertificate` answers for this SNI.
        case needsCertificate(serverName: String?)
        case failed(OpenSSLError)
    }

    /// Server with a certificate provider: where the choice for this connection stands.
    enum CertificateChoice {
        case notAsked
        case asked
        case chosen(OpenSSLCertifiedKey?)
        case refused(OpenSSLError)
    }

    private let context: OpenSSLContext
    private let ssl: OpaquePointer
    /// Its `BIO*` is owned by `ssl` (SSL_set_bio) and freed with it; this object outlives it.
    private let network: ByteBufferBIO
    var certificateChoice = CertificateChoice.notAsked
    /// Set when the chosen certificate could not be used or none was found; reported as the handshake failure.
    var certificateFailure: OpenSSLError?

    /// Server, with a context whose ALPN is chosen per connection: the protocol to answer, length-prefixed
    /// (`[0]` declines ALPN); read by the selection callback through the SSL's app data. Owned here.
    private var alpnAnswer: UnsafeMutableBufferPointer<UInt8>?
    /// Client: the server asked for a client certificate (a CertificateRequest came); the connection has none to
    /// give, so it answers with an empty Certificate, and a server that requires one ends the handshake (TLS 1.2) or
    /// the connection (TLS 1.3, right after it) with an alert.
    public fileprivate(set) var certificateRequested = false
    /// Client: the key this connection's session is kept and looked up under (nil: no resumption): the caller's
    /// key with the name verified, so that a session is never offered for a name it was not verified for
    /// (OpenSSL would offer it, and a server may accept it).
    private let sessionKey: String?
    private var resumptionCounted = false
    /// The authentication the session offered for resumption stands for.
    private var offeredAuthentication: SessionCache.Authentication?
    /// This connection's authentication of the server, fixed when its handshake completes (or, for a session that
    /// comes before, when the first one comes): what the sessions it brings stand for.
    private var authentication: SessionCache.Authentication?

    /// The SSL ex_data slot that points back to the connection (for the new-session callback).
    static let connectionIndex: Int32 = CSSL_SSL_get_ex_new_index()

    /// - Parameter serverName: client only: the name or IP address to verify, and (names only) the SNI sent.
    /// - Parameter choosesCertificate: server only: pause the handshake for `provideCertificate` even when
    ///   the context has no certificate provider (the handler has its own for this connection).
    /// - Parameter alpn: client only: the protocols this connection offers, in place of the context's (`[]`:
    ///   none); nil keeps the context's.
    /// - Parameter sessionKey: client only: resume a session kept under this key (and `serverName`, which is
    ///   always part of it), if the context keeps sessions and has one, and keep this connection's sessions under
    ///   it. It names what else a session may be reused for: the destination.
    public init(
        context: OpenSSLContext, serverName: String? = nil, choosesCertificate: Bool = false, alpn: [String]? = nil,
        sessionKey: String? = nil
    ) throws(OpenSSLError) {
        OpenSSLError.clearQueue()
        guard let ssl = SSL_new(context.pointer) else { throw OpenSSLError.drain(operation: "creating a TLS connection") }
        let network: ByteBufferBIO
        do {
            network = try ByteBufferBIO()
        } catch {
            SSL_free(ssl)
            throw error
        }
        // One BIO both ways: SSL_set_bio takes the one reference.
        SSL_set_bio(ssl, network.bio, network.bio)
        self.context = context
        self.ssl = ssl
        self.network = network
        // The name behind its length: no name and key can read as another.
        self.sessionKey = context.configuration.role == .client
            ? sessionKey.map { "\((serverName ?? "").utf8.count):\(serverName ?? "")\($0)" } : nil

        switch context.configuration.role {
        case .server:
            SSL_set_accept_state(ssl)
            if context.configuration.certificateProvider != nil || choosesCertificate {
                // The SSL is ours, so the unretained pointer to self lives exactly as long as the callback can run.
                SSL_set_cert_cb(ssl, certificateCallback, Unmanaged.passUnretained(self).toOpaque())
            }
        case .client:
            SSL_set_connect_state(ssl)
            // Called only when the server asks for a certificate. The SSL is ours, so the unretained pointer to self
            // lives exactly as long as the callback can run.
            SSL_set_cert_cb(ssl, certificateRequestCallback, Unmanaged.passUnretained(self).toOpaque())
            if let serverName {
                try configurePeerName(serverName)
            }
            if let alpn {
                // An empty list clears the offer: no ALPN extension at all.
                let wire = OpenSSLContext.alpnWireFormat(alpn)
                guard SSL_set_alpn_protos(ssl, wire, UInt32(wire.count)) == 0 else {
                    throw OpenSSLError.drain(operation: "setting the ALPN protocols")
                }
            }
            if let sessionKey = self.sessionKey, let sessions = context.sessionCache {
                // The SSL is ours, so the unretained pointer to self lives exactly as long as the callback can run.
                SSL_set_ex_data(ssl, Self.connectionIndex, Unmanaged.passUnretained(self).toOpaque())
                if let (session, authentication) = sessions.take(sessionKey, now: sessions.clock()) {
                    // The SSL takes a reference of its own; the cache's is released.
                    SSL_set_session(ssl, session)
                    SSL_SESSION_free(session)
                    offeredAuthentication = authentication
                }
            }
        }
    }

    deinit {
        SSL_free(ssl)
        alpnAnswer?.deallocate()
    }

    /// Server, with `alpnChosenPerConnection`: answer the client's ALPN offer with exactly `protocolName` (if the
    /// client offered it), or with no ALPN at all (nil). Set before the ClientHello is processed.
    public func answerALPN(with protocolName: String?) {
        alpnAnswer?.deallocate()
        let bytes = protocolName.map { Array($0.utf8.prefix(255)) } ?? []
        let buffer = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: bytes.count + 1)
        buffer[0] = UInt8(bytes.count)
        for (index, byte) in bytes.enumerated() { buffer[index + 1] = byte }
        alpnAnswer = buffer
        SSL_set_ex_data(ssl, 0, UnsafeMutableRawPointer(buffer.baseAddress))
    }

    private func configurePeerName(_ name: String) throws(OpenSSLError) {
        if Self.isIPAddress(name) {
            // An IP address is checked against the certificate's IP SANs and never sent as SNI (RFC 6066 §3).
            guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1 else {
                throw OpenSSLError.drain(operation: "setting the IP address to verify")
            }
        } else {
            guard CSSL_SSL_set_tlsext_host_name(ssl, name) == 1 else {
                throw OpenSSLError.drain(operation: "setting the server name")
            }
            // As browsers and Go check a name: no partial wildcards (`api*.example.com`), and the subject's CN is never
            // taken for a name when the certificate has none in its subjectAltName.
            SSL_set_hostflags(ssl, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS | X509_CHECK_FLAG_NEVER_CHECK_SUBJECT))
            guard SSL_set1_host(ssl, name) == 1 else {
                throw OpenSSLError.drain(operation: "setting the host name to verify")
            }
        }
    }

    public static func isIPAddress(_ text: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }

    // MARK: network side

    public func consumeFromNetwork(_ buffer: ByteBuffer) {
        network.append(buffer)
    }

    /// Everything waiting to be sent to the peer, in one buffer; nil when there is nothing.
    public func takeForNetwork(allocator: ByteBufferAllocator) -> ByteBuffer? {
        network.takeOutbound(allocator: allocator)
    }

    public enum ReadResult: Sendable, Equatable {
        /// Plaintext was appended to the buffer.
        case read(Int)
        case needMoreData
        case closed
        case failed(OpenSSLError)
    }

    /// Decrypts up to `maximum` bytes onto the end of `buffer`. The buffer grows only when it holds data and
    /// less than `minimumRoom` is left in it: asking for `maximum` free bytes every time made the second read
    /// into a buffer (the one that finds no more data) reallocate it and copy what it held. An empty buffer
    /// takes what fits; the rest of a record waits in OpenSSL for the next read.
    public func read(into buffer: inout ByteBuffer, maximum: Int = 16384, minimumRoom: Int = 4096) -> ReadResult {
        OpenSSLError.clearQueue()
        var result: Int32 = 0
        let room = buffer.writableBytes
        let reserve = room >= min(minimumRoom, maximum) || (room > 0 && buffer.readableBytes == 0) ? 1 : maximum
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: reserve) { raw in
            result = SSL_read(ssl, raw.baseAddress, Int32(min(raw.count, maximum)))
            return result > 0 ? Int(result) : 0
        }
        if result > 0 { return .read(Int(result)) }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return .needMoreData
        case SSL_ERROR_ZERO_RETURN: return .closed
        default: return .failed(failure(operation: "TLS read"))
        }
    }

    /// Whether a read could yield anything now: ciphertext not yet given to OpenSSL, or bytes OpenSSL holds
    /// (a record read but not yet returned, or one only partly received). When false, `read` would only
    /// answer `.needMoreData`, so the caller can skip the call.
    public var hasBufferedInput: Bool {
        !network.inbound.isEmpty || SSL_has_pending(ssl) == 1
    }

    /// Encrypts all of `buffer`'s readable bytes (as many records as it takes).
    public func write(_ buffer: ByteBuffer) -> Result<Void, OpenSSLError> {
        guard buffer.readableBytes > 0 else { return .success(()) }
        OpenSSLError.clearQueue()
        let written = buffer.withUnsafeReadableBytes { SSL_write(ssl, $0.baseAddress, Int32($0.count)) }
        guard written == Int32(buffer.readableBytes) else { return .failure(failure(operation: "TLS write")) }
        return .success(())
    }

    // MARK: TLS

    public func doHandshake() -> HandshakeResult {
        OpenSSLError.clearQueue()
        let result = SSL_do_handshake(ssl)
        if result == 1 {
            if sessionKey != nil, let sessions = context.sessionCache {
                if authentication == nil { authentication = currentAuthentication(now: sessions.clock()) }
                if !resumptionCounted && SSL_session_reused(ssl) == 1 {
                    resumptionCounted = true
                    sessions.noteResumption()
                }
            }
            return .complete
        }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .incomplete
        case SSL_ERROR_WANT_X509_LOOKUP:
            return .needsCertificate(serverName: requestedServerName)
        default:
            if let certificateFailure {
                OpenSSLError.clearQueue()
                return .failed(certificateFailure)
            }
            return .failed(failure(operation: "TLS handshake"))
        }
    }

    /// Server: the SNI host name the client asked for, if any.
    public var requestedServerName: String? {
        guard let name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) else { return nil }
        return String(cString: name)
    }

    /// Server: the answer to `.needsCertificate`; nil uses the context's default certificate. Call
    /// `doHandshake` next.
    public func provideCertificate(_ certifiedKey: OpenSSLCertifiedKey?) {
        certificateChoice = .chosen(certifiedKey)
    }

    /// Server: the provider failed; the next `doHandshake` sends the client an alert and fails with `error`.
    public func refuseCertificate(_ error: OpenSSLError) {
        certificateChoice = .refused(error)
    }

    /// Called by OpenSSL from the certificate callback: 1 go on, 0 fail, -1 pause for the provider.
    fileprivate func chooseCertificate() -> Int32 {
        switch certificateChoice {
        case .notAsked:
            certificateChoice = .asked
            return -1
        case .asked:
            return -1
        case .chosen(nil):
            guard context.hasDefaultCertificate else {
                certificateFailure = OpenSSLError(
                    operation: "TLS handshake",
                    entries: ["no certificate for server name \(requestedServerName ?? "(none sent)")"]
                )
                return 0
            }
            return 1
        case .chosen(let certifiedKey?):
            return use(certifiedKey) ? 1 : 0
        case .refused(let error):
            certificateFailure = error
            return 0
        }
    }

    private func use(_ certifiedKey: OpenSSLCertifiedKey) -> Bool {
        OpenSSLError.clearQueue()
        var ok = SSL_use_certificate(ssl, certifiedKey.leaf.pointer) == 1
        ok = ok && CSSL_SSL_clear_chain_certs(ssl) == 1
        for intermediate in certifiedKey.chain.dropFirst() where ok {
            ok = CSSL_SSL_add1_chain_cert(ssl, intermediate.pointer) == 1
        }
        // The pair was checked when the OpenSSLCertifiedKey was made; no need to compare keys per connection.
        ok = ok && SSL_use_PrivateKey(ssl, certifiedKey.key.pointer) == 1
        if !ok { certificateFailure = OpenSSLError.drain(operation: "using the chosen certificate") }
        return ok
    }

    /// Queues a close_notify alert for the peer (take it with `takeForNetwork`).
    public func shutdown() {
        OpenSSLError.clearQueue()
        _ = SSL_shutdown(ssl)
    }

    /// The protocol both sides agreed on through ALPN, if any.
    public var negotiatedProtocol: String? {
        var data: UnsafePointer<UInt8>? = nil
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
    }

    /// The negotiated cipher suite, e.g. `TLS_AES_128_GCM_SHA256`.
    public var cipherSuite: String? {
        guard let cipher = SSL_get_current_cipher(ssl), let name = SSL_CIPHER_get_name(cipher) else { return nil }
        return String(cString: name)
    }

    /// The negotiated protocol version, e.g. `TLSv1.3`.
    public var protocolVersion: String {
        String(cString: SSL_get_version(ssl))
    }

    /// The OpenSSL error queue, plus the certificate verification result when that is what failed.
    private func failure(operation: String) -> OpenSSLError {
        var error = OpenSSLError.drain(operation: operation)
        error.certificateRequested = certificateRequested
        let verify = SSL_get_verify_result(ssl)
        if verify == Int(X509_V_ERR_APPLICATION_VERIFICATION) {
            error.verifyResult = DistrustedIssuers.rejectionReason
        } else if verify != X509_V_OK {
            var reason = String(cString: X509_verify_cert_error_string(verify))
            if DistrustedIssuers.missingIssuerResults.contains(verify), distrustedIssuerSigned {
                reason += ": " + DistrustedIssuers.issuerReason
            }
            error.verifyResult = reason
        }
        return error
    }

    /// Client: whether an issuer the context distrusts (the inspection CA) issued a certificate the server sent.
    private var distrustedIssuerSigned: Bool {
        guard let context = SSL_get_SSL_CTX(ssl), let store = SSL_CTX_get_cert_store(context),
            let distrusted = DistrustedIssuers.of(store: store), let chain = SSL_get_peer_cert_chain(ssl)
        else { return false }
        return distrusted.issuedAny(of: chain)
    }
}

@available(*, unavailable)
extension OpenSSLConnection: Sendable {}

/// Client: the server asked for a certificate. None is sent (1: go on without one); the connection notes the request.
private func certificateRequestCallback(_ ssl: OpaquePointer?, _ argument: UnsafeMutableRawPointer?) -> Int32 {
    guard let argument else { return 1 }
    Unmanaged<OpenSSLConnection>.fromOpaque(argument).takeUnretainedValue().certificateRequested = true
    return 1
}

private func certificateCallback(_ ssl: OpaquePointer?, _ argument: UnsafeMutableRawPointer?) -> Int32 {
    guard let argument else { return 0 }
    return Unmanaged<OpenSSLConnection>.fromOpaque(argument).takeUnretainedValue().chooseCertificate()
}

extension OpenSSLConnection {
    /// Client: whether the handshake resumed a session rather than verifying the server again.
    public var sessionReused: Bool { SSL_session_reused(ssl) == 1 }

    /// Client, after a verified handshake: when the server was authenticated (Unix seconds: this handshake's
    /// time, or for a resumed session the full handshake it descends from) and the earliest notAfter of the
    /// certificates it sent then. Nil before the handshake, when verification failed, or when a resumed session's
    /// authentication is not known (a session kept by another context).
    public var serverAuthentication: (at: Int64, notAfter: Int64)? {
        guard SSL_get_verify_result(ssl) == Int(X509_V_OK) else { return nil }
        let found = authentication ?? currentAuthentication(now: context.sessionCache?.clock() ?? Int64(time(nil)))
        return found.map { ($0.at, $0.notAfter) }
    }

    /// A session the server sent on this connection (after a handshake that verified it): a copy is kept under
    /// the connection's session key. A copy, because OpenSSL marks the connection's own session as not resumable
    /// when the connection ends without close_notify, which neither TLS 1.3 (RFC 8446 §6.1) nor TLS 1.2 asks for
    /// and which an upstream or a client ending the connection any other way would do.
    fileprivate func keep(_ session: OpaquePointer) {
        guard let sessionKey, let sessions = context.sessionCache, SSL_SESSION_is_resumable(session) == 1,
            SSL_SESSION_get_protocol_version(session) == TLS1_3_VERSION,
            SSL_get_verify_result(ssl) == Int(X509_V_OK)
        else { return }
        let now = sessions.clock()
        if authentication == nil { authentication = currentAuthentication(now: now) }
        guard let authentication, let copy = SSL_SESSION_dup(session) else { return }
        sessions.store(copy, key: sessionKey, now: now, authentication: authentication)
    }

    /// A resumed connection stands for the authentication of the session it resumed; a full handshake
    /// authenticated the server now, with the certificates it sent.
    private func currentAuthentication(now: Int64) -> SessionCache.Authentication? {
        if sessionReused { return offeredAuthentication }
        guard let chain = SSL_get_peer_cert_chain(ssl), let notAfter = OpenSSLCertificate.earliestNotAfter(of: chain)
        else { return nil }
        return .init(at: now, notAfter: notAfter)
    }

    /// Server: sends the client a new session ticket now (tests: a ticket that comes late in a connection).
    func sendSessionTicket() -> Bool { SSL_new_session_ticket(ssl) == 1 }
}

/// `SSL_CTX_sess_set_new_cb`'s function. 0: OpenSSL keeps its reference (the cache holds a copy).
func newClientSession(_ ssl: OpaquePointer?, _ session: OpaquePointer?) -> Int32 {
    guard let ssl, let session, let connection = SSL_get_ex_data(ssl, OpenSSLConnection.connectionIndex) else { return 0 }
    Unmanaged<OpenSSLConnection>.fromOpaque(connection).takeUnretainedValue().keep(session)
    return 0
}

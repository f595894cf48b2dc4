internal import CSSL
internal import CSSLClientContext
public import NIOCore

/// An immutable TLS configuration: the owner of one `SSL_CTX`. Build it once, off the event loop (loading
/// trust stores and keys reads files), and share it between connections.
public final class OpenSSLContext: @unchecked Sendable {
    // @unchecked Sendable: nothing is mutated after init; OpenSSL documents SSL_CTX as safe to share for
    // creating connections once configured.

    public enum Role: Sendable {
        case client
        case server
    }

    public typealias CertificateProvider =
        @Sendable (_ serverName: String?, _ eventLoop: any EventLoop) -> EventLoopFuture<OpenSSLCertifiedKey?>

    public struct Configuration: Sendable {
        public var role: Role
        /// Protocols offered (client) or accepted in preference order (server), e.g. `["h2", "http/1.1"]`.
        public var alpn: [String] = []
        /// Client: verify the server's chain and name. On by default; off only for tests of the failure paths.
        public var verifyPeer = true
        /// Client: trust OpenSSL's default store (honours `SSL_CERT_FILE` and `SSL_CERT_DIR`).
        public var trustSystemStore = true
        /// Client: also trust the certificates in this PEM bundle.
        public var additionalTrustFile: String?
        /// Client: never take these as issuers when verifying a server, whatever trust store holds them; matched by
        /// subject and public key (`DistrustedIssuers`). The inspection CA: its key mints the leaves shown to clients.
        public var distrustedIssuers: [OpenSSLCertificate] = []
        /// Server: the certificate chain (leaf first) and its key, PEM or DER files.
        public var certificateChainFile: String?
        public var privateKeyFile: String?
        /// Server: the same, already loaded (used instead of the files).
        public var certifiedKey: OpenSSLCertifiedKey?
        /// Server: chooses the certificate for each connection from the client's SNI (nil when the client
        /// sent none), during the handshake, on the connection's event loop. Answering nil falls back to the
        /// default certificate above; with no default the handshake fails, naming the server name.
        /// With a provider the default certificate is optional.
        public var certificateProvider: CertificateProvider?
        /// Server: every connection's handler brings its own certificate provider, so the context needs
        /// neither a default certificate nor a provider.
        public var certificatesChosenPerConnection = false
        /// Client, verifying: seconds a chain that passed verification is trusted again without building and
        /// checking it again (never past its earliest notAfter); the name is checked against it on every
        /// connection. 0 verifies every chain in full.
        public var verificationCacheLifetime: Int64 = 600
        /// Client: seconds a session from a server is kept for the next connection with the same session key
        /// (`OpenSSLConnection`'s `sessionKey`), at most (the server's ticket lifetime hint can shorten it); 0
        /// resumes nothing.
        public var sessionLifetime: Int64 = 600
        /// The time (Unix seconds) the session cache reads; tests set it.
        var clock: @Sendable () -> Int64 = { Int64(time(nil)) }
        /// TLS 1.2 at most (tests of the TLS 1.2 paths).
        var tls12Only = false
        /// Client: made in the client library context (`kaizen_client_library_context`), where parsing a server's
        /// certificates costs about half as much, when the system allows it. Tests turn it off to compare.
        var inClientLibraryContext = true
        /// Server only: the protocol answered to each client's ALPN offer is set per connection
        /// (`OpenSSLConnection.answerALPN`), not chosen from `alpn`.
        public var alpnChosenPerConnection = false

        public init(role: Role) {
            self.role = role
        }
    }

    let pointer: OpaquePointer
    public let configuration: Configuration
    /// Whether the context was made in the client library context (a client, on a system whose OpenSSL
    /// configuration loads only the default provider).
    public let inClientLibraryContext: Bool
    /// Client, verifying: chains verified recently (the context's verify callback reads it; every connection holds
    /// the context, so it outlives them).
    let verificationCache: VerificationCache?
    /// Client: sessions to resume, by session key (the new-session callback fills it through the connection).
    let sessionCache: SessionCache?
    /// Server: the ALPN list in wire format, behind a 2-byte length; read by the selection callback.
    private let alpnServerList: UnsafeMutableBufferPointer<UInt8>?
    /// Client: the certificates its trust store's lookups leave out (the store points to it, unretained).
    private let distrusted: DistrustedIssuers?

    public init(configuration: Configuration) throws(OpenSSLError) {
        OpenSSLError.clearQueue()
        let method = configuration.role == .client ? TLS_client_method() : TLS_server_method()
        // A client context in the client library context: the default provider's algorithms, with only the decoders a
        // server's certificates need. The server contexts parse no certificates per connection; they keep the default.
        let library = configuration.role == .client && configuration.inClientLibraryContext
            ? kaizen_client_library_context() : nil
        guard let context = library.map({ SSL_CTX_new_ex($0, nil, method) }) ?? SSL_CTX_new(method) else {
            throw OpenSSLError.drain(operation: "creating a TLS context")
        }
        self.pointer = context
        self.inClientLibraryContext = library != nil
        self.configuration = configuration
        // The verification callback also checks the built chain for distrusted issuers: with those, a context
        // that keeps no chains still has one (capacity 0).
        let keepsChains = configuration.verificationCacheLifetime > 0
        let cache = configuration.role == .client && configuration.verifyPeer
            && (keepsChains || !configuration.distrustedIssuers.isEmpty)
            ? VerificationCache(capacity: keepsChains ? 1024 : 0, lifetime: configuration.verificationCacheLifetime) : nil
        self.verificationCache = cache
        let sessions = configuration.role == .client && configuration.sessionLifetime > 0
            ? SessionCache(lifetime: configuration.sessionLifetime, clock: configuration.clock) : nil
        self.sessionCache = sessions
        let distrusted = configuration.role == .client && !configuration.distrustedIssuers.isEmpty
            ? DistrustedIssuers(configuration.distrustedIssuers) : nil
        self.distrusted = distrusted
        var serverList: UnsafeMutableBufferPointer<UInt8>? = nil
        do throws(OpenSSLError) {
            guard CSSL_SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION) == 1 else {
                throw OpenSSLError.drain(operation: "setting TLS 1.2 as the minimum version")
            }
            if configuration.tls12Only && CSSL_SSL_CTX_set_max_proto_version(context, TLS1_2_VERSION) != 1 {
                throw OpenSSLError.drain(operation: "setting TLS 1.2 as the maximum version")
            }
            // TLS 1.3 suites, AES-128-GCM first (OpenSSL's default puts AES-256-GCM first): every inspected byte is
            // decrypted and encrypted again here, and AES-128's 10 rounds cost less than AES-256's 14, for the
            // peers too. It is the suite TLS 1.3 requires of every implementation (RFC 8446 §9.1) and the one
            // BoringSSL, Go and the browsers prefer. A server follows its own order unless the client puts
            // ChaCha20 first (a client without AES instructions), as BoringSSL does.
            guard SSL_CTX_set_ciphersuites(context, Self.tls13Suites) == 1 else {
                throw OpenSSLError.drain(operation: "setting the TLS 1.3 cipher suites")
            }
            // TLS 1.2: OpenSSL's default set, with AES-128-GCM moved first (the server's order applies there too).
            guard SSL_CTX_set_cipher_list(context, Self.tls12Ciphers) == 1 else {
                throw OpenSSLError.drain(operation: "setting the TLS 1.2 cipher list")
            }
            if configuration.role == .server { CSSL_SSL_CTX_prefer_server_ciphers_unless_chacha(context) }
            let wire = Self.alpnWireFormat(configuration.alpn)
            switch configuration.role {
            case .client:
                try Self.configureClient(context, configuration, alpnWire: wire)
                if let distrusted {
                    guard let store = SSL_CTX_get_cert_store(context) else {
                        throw OpenSSLError(operation: "leaving the inspection CA out of the trust store", entries: ["no certificate store"])
                    }
                    distrusted.install(on: store)
                }
                if let cache {
                    SSL_CTX_set_cert_verify_callback(context, verifyThroughCache, Unmanaged.passUnretained(cache).toOpaque())
                }
                if sessions != nil {
                    CSSL_SSL_CTX_cache_client_sessions_externally(context)
                    SSL_CTX_sess_set_new_cb(context, newClientSession)
                }
            case .server:
                try Self.configureServer(context, configuration)
                if configuration.alpnChosenPerConnection {
                    SSL_CTX_set_alpn_select_cb(context, alpnAnswerPerConnection, nil)
                } else if !wire.isEmpty {
                    let buffer = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: wire.count + 2)
                    buffer[0] = UInt8(wire.count >> 8)
                    buffer[1] = UInt8(wire.count & 0xff)
                    for (index, byte) in wire.enumerated() { buffer[index + 2] = byte }
                    serverList = buffer
                    SSL_CTX_set_alpn_select_cb(context, alpnSelect, UnsafeMutableRawPointer(buffer.baseAddress))
                }
            }
        } catch {
            SSL_CTX_free(context)
            serverList?.deallocate()
            throw error
        }
        self.alpnServerList = serverList
    }

    /// Client: handshakes that resumed a kept session.
    public var sessionsResumed: Int { sessionCache?.resumptions ?? 0 }

    /// Client: server chains accepted from the verification cache rather than verified again.
    public var chainsVerifiedFromCache: Int { verificationCache?.hits ?? 0 }

    deinit {
        SSL_CTX_free(pointer)
        alpnServerList?.deallocate()
    }

    private static func configureClient(
        _ context: OpaquePointer,
        _ configuration: Configuration,
        alpnWire: [UInt8]
    ) throws(OpenSSLError) {
        if configuration.verifyPeer {
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        } else {
            SSL_CTX_set_verify(context, SSL_VERIFY_NONE, nil)
        }
        if configuration.trustSystemStore {
            guard SSL_CTX_set_default_verify_paths(context) == 1 else {
                throw OpenSSLError.drain(operation: "loading the system trust store")
            }
        }
        if let file = configuration.additionalTrustFile {
            guard SSL_CTX_load_verify_locations(context, file, nil) == 1 else {
                throw OpenSSLError.drain(operation: "loading the trust bundle \(file)")
            }
        }
        if !alpnWire.isEmpty {
            // Returns 0 on success (the opposite of most OpenSSL calls).
            guard SSL_CTX_set_alpn_protos(context, alpnWire, UInt32(alpnWire.count)) == 0 else {
                throw OpenSSLError.drain(operation: "setting the ALPN protocols")
            }
        }
    }

    private static func configureServer(_ context: OpaquePointer, _ configuration: Configuration) throws(OpenSSLError) {
        let certifiedKey: OpenSSLCertifiedKey
        if let loaded = configuration.certifiedKey {
            certifiedKey = loaded
        } else if let chain = configuration.certificateChainFile, let key = configuration.privateKeyFile {
            certifiedKey = try OpenSSLCertifiedKey(chainFile: chain, keyFile: key)
        } else if configuration.certificateProvider != nil || configuration.certificatesChosenPerConnection {
            return
        } else {
            throw OpenSSLError(
                operation: "configuring a TLS server",
                entries: ["a certificate chain and a key (or a certificate provider) are required"]
            )
        }
        OpenSSLError.clearQueue()
        guard SSL_CTX_use_certificate(context, certifiedKey.leaf.pointer) == 1 else {
            throw OpenSSLError.drain(operation: "using the certificate")
        }
        for intermediate in certifiedKey.chain.dropFirst() {
            guard CSSL_SSL_CTX_add1_chain_cert(context, intermediate.pointer) == 1 else {
                throw OpenSSLError.drain(operation: "adding a chain certificate")
            }
        }
        guard SSL_CTX_use_PrivateKey(context, certifiedKey.key.pointer) == 1 else {
            throw OpenSSLError.drain(operation: "using the private key")
        }
        guard SSL_CTX_check_private_key(context) == 1 else {
            throw OpenSSLError.drain(operation: "matching the private key to the certificate")
        }
    }

    static let tls13Suites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
    /// `DEFAULT` spelled out (`ALL:!COMPLEMENTOFDEFAULT:!eNULL`, which is what it expands to) behind the two
    /// AES-128-GCM suites: the same set, in that order first.
    static let tls12Ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ALL:!COMPLEMENTOFDEFAULT:!eNULL"

    /// Server: whether a certificate is configured for connections the provider does not answer.
    var hasDefaultCertificate: Bool {
        configuration.certifiedKey != nil
            || (configuration.certificateChainFile != nil && configuration.privateKeyFile != nil)
    }

    /// `["h2", "http/1.1"]` → `02 68 32 08 68 74 74 70 2f 31 2e 31` (RFC 7301 §3.1).
    static func alpnWireFormat(_ protocols: [String]) -> [UInt8] {
        var wire: [UInt8] = []
        for name in protocols where !name.isEmpty && name.utf8.count <= 255 {
            wire.append(UInt8(name.utf8.count))
            wire.append(contentsOf: name.utf8)
        }
        return wire
    }
}

/// The answer set on this connection (`answerALPN`): that protocol if the client offered it, else no ALPN.
private func alpnAnswerPerConnection(
    _ ssl: OpaquePointer?,
    _ out: UnsafeMutablePointer<UnsafePointer<UInt8>?>?,
    _ outLength: UnsafeMutablePointer<UInt8>?,
    _ clientList: UnsafePointer<UInt8>?,
    _ clientLength: UInt32,
    _ argument: UnsafeMutableRawPointer?
) -> Int32 {
    guard let ssl, let out, let outLength, let clientList,
        let answer = SSL_get_ex_data(ssl, 0)?.assumingMemoryBound(to: UInt8.self), answer[0] > 0
    else { return SSL_TLSEXT_ERR_NOACK }
    // OpenSSL's own list matching, with the answer as a one-protocol server list (length-prefixed).
    var selected: UnsafeMutablePointer<UInt8>? = nil
    var selectedLength: UInt8 = 0
    let result = SSL_select_next_proto(&selected, &selectedLength, answer, UInt32(answer[0]) + 1, clientList, clientLength)
    guard result == OPENSSL_NPN_NEGOTIATED, let selected else { return SSL_TLSEXT_ERR_NOACK }
    out.pointee = UnsafePointer(selected)
    outLength.pointee = selectedLength
    return SSL_TLSEXT_ERR_OK
}

/// The server's ALPN choice: its first protocol the client also offered; none (no ALPN) when they share none.
private func alpnSelect(
    _ ssl: OpaquePointer?,
    _ out: UnsafeMutablePointer<UnsafePointer<UInt8>?>?,
    _ outLength: UnsafeMutablePointer<UInt8>?,
    _ clientList: UnsafePointer<UInt8>?,
    _ clientLength: UInt32,
    _ argument: UnsafeMutableRawPointer?
) -> Int32 {
    guard let argument, let out, let outLength, let clientList else { return SSL_TLSEXT_ERR_NOACK }
    let header = argument.assumingMemoryBound(to: UInt8.self)
    let serverLength = UInt32(header[0]) << 8 | UInt32(header[1])
    var selected: UnsafeMutablePointer<UInt8>? = nil
    var selectedLength: UInt8 = 0
    let result = SSL_select_next_proto(&selected, &selectedLength, header + 2, serverLength, clientList, clientLength)
    guard result == OPENSSL_NPN_NEGOTIATED, let selected else { return SSL_TLSEXT_ERR_NOACK }
    out.pointee = UnsafePointer(selected)
    outLength.pointee = selectedLength
    return SSL_TLSEXT_ERR_OK
}

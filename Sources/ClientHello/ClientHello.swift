/// What a TLS ClientHello says about where the client wants to go.
///
/// Only the fields the proxy reports or decides on are kept; the rest of the message is skipped.
public struct ClientHello: Sendable, Hashable {
    /// The `host_name` entry of the server_name extension (RFC 6066), lowercased, without a trailing dot.
    /// `nil` when the client sent no server_name extension (e.g. it connects to an IP address).
    public var serverName: String?

    /// Protocols offered in the application_layer_protocol_negotiation extension (RFC 7301), in the
    /// client's order. Empty when the client offered none.
    public var alpn: [String]

    /// `legacy_version` from the ClientHello body (0x0303 for TLS 1.2 and 1.3 clients).
    public var legacyVersion: UInt16

    /// Versions listed in the supported_versions extension (RFC 8446 §4.2.1), GREASE values removed.
    public var supportedVersions: [UInt16]

    /// Whether an encrypted_client_hello extension (0xfe0d) was present. Chromium sends a GREASE one on
    /// every connection, so this alone does not mean the server name above is an ECH outer name.
    public var offersEncryptedClientHello: Bool

    /// Whether a pre_shared_key extension (41, RFC 8446 §4.2.11) was present: the client offers to resume an
    /// earlier session, which a server may accept without showing a certificate again.
    public var offersPreSharedKey: Bool

    /// Whether a TLS 1.2 resumption is offered: a non-empty session_ticket extension (35, RFC 5077), or a session ID
    /// from a client that does not offer TLS 1.3 (a TLS 1.3 client sends a random one for middleboxes).
    public var offersTLS12Resumption: Bool = false

    /// Whether the client offers to resume an earlier session in any way: its server may then accept it without
    /// showing a certificate again.
    public var offersResumption: Bool { offersPreSharedKey || offersTLS12Resumption }

    public init(
        serverName: String?,
        alpn: [String],
        legacyVersion: UInt16,
        supportedVersions: [UInt16],
        offersEncryptedClientHello: Bool,
        offersPreSharedKey: Bool = false
    ) {
        self.serverName = serverName
        self.alpn = alpn
        self.legacyVersion = legacyVersion
        self.supportedVersions = supportedVersions
        self.offersEncryptedClientHello = offersEncryptedClientHello
        self.offersPreSharedKey = offersPreSharedKey
    }
}

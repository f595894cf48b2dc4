import NIOCore

/// Parses the first bytes a client sends on a tunnel as a TLS ClientHello.
///
/// The parser never consumes its input: it reads a copy, so the caller can relay the same bytes on
/// untouched. It joins a handshake message split across several TLS records (post-quantum key shares make
/// ClientHellos larger than one TCP segment, and some stacks fragment records), and it tells "not enough
/// bytes yet" apart from "this is not a ClientHello".
public enum ClientHelloParser {
    /// The result of looking at the bytes seen so far.
    public enum Outcome: Sendable, Hashable {
        /// The ClientHello is complete and well formed.
        case parsed(ClientHello)
        /// Everything so far is consistent with a ClientHello, but it is not complete yet.
        case needMoreData
        /// The bytes are not a TLS handshake at all (another protocol, or SSLv2).
        case notTLS(reason: String)
        /// The bytes start like TLS but break its rules.
        case malformed(reason: String)
        /// The ClientHello would be larger than the parser's limit.
        case tooLarge(limit: Int)
    }

    /// The largest number of bytes (records included) the parser will look at.
    public static let defaultLimit = 64 * 1024

    // Wire constants (RFC 8446 §5.1, §4, §4.2; RFC 6066 §3; RFC 7301 §3.1).
    private static let recordHeaderLength = 5
    private static let contentTypeHandshake: UInt8 = 22
    private static let handshakeHeaderLength = 4
    private static let handshakeTypeClientHello: UInt8 = 1
    private static let maxRecordPayload = 16384 + 256  // TLSPlaintext limit plus RFC 8449's allowance
    private static let randomLength = 32
    private static let maxSessionIDLength = 32
    private static let extensionServerName: UInt16 = 0
    private static let extensionALPN: UInt16 = 16
    private static let extensionSupportedVersions: UInt16 = 43
    private static let extensionEncryptedClientHello: UInt16 = 0xfe0d
    private static let extensionPreSharedKey: UInt16 = 41
    private static let extensionSessionTicket: UInt16 = 35
    private static let serverNameTypeHostName: UInt8 = 0
    private static let maxHostNameLength = 255

    /// Looks at `buffer`'s readable bytes without moving its reader index.
    public static func parse(_ buffer: ByteBuffer, limit: Int = defaultLimit) -> Outcome {
        buffer.withUnsafeReadableBytes { parse(bytes: $0, limit: limit) }
    }

    /// Looks at `bytes`, the first bytes the client sent.
    public static func parse(bytes: some Collection<UInt8>, limit: Int = defaultLimit) -> Outcome {
        let array = Array(bytes)
        return array.withUnsafeBytes { parse(bytes: $0, limit: limit) }
    }

    /// Looks at `bytes`, the first bytes the client sent.
    public static func parse(bytes: UnsafeRawBufferPointer, limit: Int = defaultLimit) -> Outcome {
        switch reassembleHandshake(bytes, limit: limit) {
        case .failure(let box):
            return box.outcome
        case .success(let message):
            return parseClientHelloBody(message)
        }
    }

    /// Walks the record layer and returns the first handshake message's body once it is complete.
    private static func reassembleHandshake(
        _ bytes: UnsafeRawBufferPointer,
        limit: Int
    ) -> Result<[UInt8], OutcomeBox> {
        guard let first = bytes.first else { return .failure(OutcomeBox(.needMoreData)) }
        if first != contentTypeHandshake {
            if first & 0x80 != 0 && bytes.count >= 3 && bytes[2] == 1 {
                return .failure(OutcomeBox(.notTLS(reason: "SSLv2-style ClientHello")))
            }
            return .failure(OutcomeBox(.notTLS(reason: "first byte 0x\(hex(first)) is not a TLS handshake record")))
        }

        var handshake: [UInt8] = []
        var needed: Int? = nil  // total handshake bytes (header + body) once the header is known
        var offset = 0
        while true {
            if let needed, handshake.count >= needed {
                return .success(Array(handshake[handshakeHeaderLength..<needed]))
            }
            if offset >= limit { return .failure(OutcomeBox(.tooLarge(limit: limit))) }
            guard bytes.count - offset >= recordHeaderLength else {
                if bytes.count - offset >= 1 && bytes[offset] != contentTypeHandshake {
                    return .failure(OutcomeBox(.malformed(reason: "record of type \(bytes[offset]) inside the ClientHello")))
                }
                if bytes.count - offset >= 2 && bytes[offset + 1] != 3 {
                    return .failure(OutcomeBox(.notTLS(reason: "record version major byte is \(bytes[offset + 1]), not 3")))
                }
                return .failure(OutcomeBox(.needMoreData))
            }
            let contentType = bytes[offset]
            let versionMajor = bytes[offset + 1]
            let length = Int(bytes[offset + 3]) << 8 | Int(bytes[offset + 4])
            guard contentType == contentTypeHandshake else {
                return .failure(OutcomeBox(.malformed(reason: "record of type \(contentType) inside the ClientHello")))
            }
            guard versionMajor == 3 else {
                return .failure(OutcomeBox(.notTLS(reason: "record version major byte is \(versionMajor), not 3")))
            }
            guard length > 0 else {
                return .failure(OutcomeBox(.malformed(reason: "empty handshake record")))
            }
            guard length <= maxRecordPayload else {
                return .failure(OutcomeBox(.malformed(reason: "record length \(length) exceeds the TLS limit")))
            }
            if offset + recordHeaderLength + length > limit {
                return .failure(OutcomeBox(.tooLarge(limit: limit)))
            }
            let payloadStart = offset + recordHeaderLength
            let available = min(length, bytes.count - payloadStart)
            handshake.append(contentsOf: bytes[payloadStart..<(payloadStart + available)])

            if needed == nil && handshake.count >= handshakeHeaderLength {
                guard handshake[0] == handshakeTypeClientHello else {
                    return .failure(OutcomeBox(.malformed(reason: "handshake message type \(handshake[0]) is not ClientHello")))
                }
                let bodyLength = Int(handshake[1]) << 16 | Int(handshake[2]) << 8 | Int(handshake[3])
                if bodyLength + handshakeHeaderLength + recordHeaderLength > limit {
                    return .failure(OutcomeBox(.tooLarge(limit: limit)))
                }
                needed = handshakeHeaderLength + bodyLength
            }
            if available < length {
                // The current record is incomplete; if what we have already completes the message
                // (it cannot, records carry no padding beyond the message here) keep waiting.
                if let needed, handshake.count >= needed {
                    return .success(Array(handshake[handshakeHeaderLength..<needed]))
                }
                return .failure(OutcomeBox(.needMoreData))
            }
            offset = payloadStart + length
        }
    }

    /// Parses a ClientHello body (RFC 8446 §4.1.2): everything after the 4-byte handshake header.
    private static func parseClientHelloBody(_ body: [UInt8]) -> Outcome {
        var reader = ByteReader(body)
        guard let legacyVersion = reader.readUInt16() else { return .malformed(reason: "truncated legacy_version") }
        guard reader.skip(randomLength) else { return .malformed(reason: "truncated random") }
        guard let sessionIDLength = reader.readUInt8(), sessionIDLength <= maxSessionIDLength,
            reader.skip(Int(sessionIDLength))
        else { return .malformed(reason: "bad legacy_session_id") }
        guard let cipherSuitesLength = reader.readUInt16(), cipherSuitesLength >= 2, cipherSuitesLength % 2 == 0,
            reader.skip(Int(cipherSuitesLength))
        else { return .malformed(reason: "bad cipher_suites") }
        guard let compressionLength = reader.readUInt8(), compressionLength >= 1,
            reader.skip(Int(compressionLength))
        else { return .malformed(reason: "bad legacy_compression_methods") }

        var hello = ClientHello(
            serverName: nil,
            alpn: [],
            legacyVersion: legacyVersion,
            supportedVersions: [],
            offersEncryptedClientHello: false
        )
        if reader.isAtEnd {
            hello.offersTLS12Resumption = sessionIDLength > 0
            return .parsed(hello)  // a pre-TLS 1.2 hello may have no extensions block at all
        }
        guard let extensionsLength = reader.readUInt16(), var extensions = reader.readSlice(Int(extensionsLength))
        else { return .malformed(reason: "truncated extensions") }
        guard reader.isAtEnd else { return .malformed(reason: "bytes after the extensions block") }

        var seen = Set<UInt16>()
        while !extensions.isAtEnd {
            guard let type = extensions.readUInt16(), let length = extensions.readUInt16(),
                var data = extensions.readSlice(Int(length))
            else { return .malformed(reason: "truncated extension") }
            guard seen.insert(type).inserted else {
                return .malformed(reason: "extension \(type) appears twice")
            }
            switch type {
            case extensionServerName:
                switch parseServerName(&data) {
                case .success(let name): hello.serverName = name
                case .failure(let error): return .malformed(reason: error.reason)
                }
            case extensionALPN:
                switch parseALPN(&data) {
                case .success(let protocols): hello.alpn = protocols
                case .failure(let error): return .malformed(reason: error.reason)
                }
            case extensionSupportedVersions:
                guard let listLength = data.readUInt8(), listLength % 2 == 0, var list = data.readSlice(Int(listLength)),
                    data.isAtEnd
                else { return .malformed(reason: "bad supported_versions") }
                while let version = list.readUInt16() {
                    if !isGREASE(version) { hello.supportedVersions.append(version) }
                }
            case extensionEncryptedClientHello:
                hello.offersEncryptedClientHello = true
            case extensionPreSharedKey:
                hello.offersPreSharedKey = true
            case extensionSessionTicket:
                if !data.isAtEnd { hello.offersTLS12Resumption = true }
            default:
                break
            }
        }
        if sessionIDLength > 0, !hello.supportedVersions.contains(0x0304) { hello.offersTLS12Resumption = true }
        return .parsed(hello)
    }

    private struct ParseError: Error {
        var reason: String
    }

    private static func parseServerName(_ data: inout ByteReader) -> Result<String?, ParseError> {
        // An empty extension is how a server acknowledges SNI; in a ClientHello it carries no name.
        if data.isAtEnd { return .success(nil) }
        guard let listLength = data.readUInt16(), var list = data.readSlice(Int(listLength)), data.isAtEnd else {
            return .failure(ParseError(reason: "bad server_name list"))
        }
        var hostName: String? = nil
        while !list.isAtEnd {
            guard let nameType = list.readUInt8(), let nameLength = list.readUInt16(),
                let name = list.readBytes(Int(nameLength))
            else { return .failure(ParseError(reason: "truncated server_name entry")) }
            guard nameType == serverNameTypeHostName else { continue }
            guard hostName == nil else { return .failure(ParseError(reason: "two host_name entries")) }
            guard !name.isEmpty, name.count <= maxHostNameLength else {
                return .failure(ParseError(reason: "host_name length \(name.count) out of range"))
            }
            // RFC 6066: ASCII, no trailing dot; we accept LDH labels plus '_' (seen in the wild).
            for byte in name {
                let ok =
                    (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x30 && byte <= 0x39)
                    || byte == 0x2d || byte == 0x2e || byte == 0x5f
                guard ok else { return .failure(ParseError(reason: "host_name contains byte 0x\(hex(byte))")) }
            }
            var text = String(decoding: name, as: UTF8.self).lowercased()
            if text.hasSuffix(".") { text.removeLast() }
            guard !text.isEmpty else { return .failure(ParseError(reason: "host_name is empty")) }
            hostName = text
        }
        return .success(hostName)
    }

    private static func parseALPN(_ data: inout ByteReader) -> Result<[String], ParseError> {
        guard let listLength = data.readUInt16(), listLength >= 2, var list = data.readSlice(Int(listLength)),
            data.isAtEnd
        else { return .failure(ParseError(reason: "bad ALPN list")) }
        var protocols: [String] = []
        while !list.isAtEnd {
            guard let length = list.readUInt8(), length > 0, let name = list.readBytes(Int(length)) else {
                return .failure(ParseError(reason: "bad ALPN protocol name"))
            }
            // Protocol names are opaque bytes; GREASE values (RFC 8701) are dropped, others kept printable.
            if name.count == 2 && name[0] == name[1] && name[0] & 0x0f == 0x0a { continue }
            protocols.append(String(decoding: name.map { (0x20...0x7e).contains($0) ? $0 : 0x3f }, as: UTF8.self))
        }
        return .success(protocols)
    }

    private static func isGREASE(_ value: UInt16) -> Bool {
        value & 0x0f0f == 0x0a0a && value >> 8 == value & 0xff
    }

    private static func hex(_ byte: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(byte >> 4)], digits[Int(byte & 0x0f)]])
    }

    /// `Result` needs an `Error` failure; this carries an early outcome through it.
    private struct OutcomeBox: Error {
        var outcome: Outcome
        init(_ outcome: Outcome) { self.outcome = outcome }
    }
}

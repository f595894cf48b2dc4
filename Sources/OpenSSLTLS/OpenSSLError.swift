internal import CSSL

/// An error from OpenSSL, carrying every entry of the thread's error queue at the time it was raised, with the
/// library's reason strings (`error:0480006C:PEM routines::no start line`).
public struct OpenSSLError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What the caller was doing (`loading a certificate`).
    public var operation: String
    /// The queue's entries, oldest first, as OpenSSL formats them.
    public var entries: [String]
    /// When certificate verification failed: OpenSSL's reason (`certificate has expired`, …).
    public var verifyResult: String?
    /// When the peer ended the handshake with a fatal alert: its description (RFC 8446 §6: 112 unrecognized_name,
    /// 120 no_application_protocol, …), as OpenSSL recorded it among the entries.
    public var peerAlert: UInt8?
    /// A client's failure after the server asked it for a certificate, which it did not have: the likely cause when
    /// the server then ended the handshake or the connection (`certificate_required`, `handshake_failure`).
    public var certificateRequested = false

    public init(operation: String, entries: [String], verifyResult: String? = nil, peerAlert: UInt8? = nil) {
        self.operation = operation
        self.entries = entries
        self.verifyResult = verifyResult
        self.peerAlert = peerAlert
    }

    public var description: String {
        var text = "\(operation) failed"
        if let verifyResult { text += ": certificate verification: \(verifyResult)" }
        if !entries.isEmpty { text += ": \(entries.joined(separator: "; "))" }
        return text
    }

    /// Empties the calling thread's OpenSSL error queue into an error. Call right after the failing call.
    static func drain(operation: String) -> OpenSSLError {
        var entries: [String] = []
        var peerAlert: UInt8?
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            // libssl records an alert it received as its own reason code plus SSL_AD_REASON_OFFSET.
            let reason = ERR_GET_REASON(code) - SSL_AD_REASON_OFFSET
            if ERR_GET_LIB(code) == ERR_LIB_SSL, (0...255).contains(reason) { peerAlert = UInt8(reason) }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            entries.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return OpenSSLError(operation: operation, entries: entries, peerAlert: peerAlert)
    }

    /// Clears the error queue before a call, so what `drain` reports belongs to that call alone.
    /// Usually the queue is already empty (every failure drains it), and looking is cheaper than clearing:
    /// `ERR_clear_error` resets all sixteen slots on every call, once per TLS read and write.
    static func clearQueue() {
        if ERR_peek_error() != 0 { ERR_clear_error() }
    }
}

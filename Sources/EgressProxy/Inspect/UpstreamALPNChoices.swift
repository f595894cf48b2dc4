import NIOConcurrencyHelpers
import NIOCore

/// What each destination's upstream chose from an ALPN offer the last time (by the session key: CONNECT host and port,
/// the name verified, the offer), and each server address (`@address port offer`): an inspected client's handshake is
/// made with it before the upstream chooses again (`InspectionStartHandler`). A wrong guess costs the client's
/// handshake made twice, never a wrong answer. Bounded: cleared when full.
final class UpstreamALPNChoices: Sendable {
    private let choices = NIOLockedValueBox<[String: String?]>([:])
    static let limit = 4096

    /// The protocol chosen last time (`.some(nil)`: none), or nil when this destination has not been seen.
    func last(for key: String) -> String?? {
        choices.withLockedValue { $0[key] }
    }

    /// What the destination of `sessionKey` chose last time; for one not seen yet, what the server at its address
    /// chose for the same offer (`serverKey`), as many names share one server.
    func last(for sessionKey: String, orServer serverKey: String?) -> String?? {
        choices.withLockedValue { choices in choices[sessionKey] ?? serverKey.flatMap { choices[$0] } }
    }

    /// Notes a choice for the destination and for the server at its address.
    func note(_ chosen: String?, for sessionKey: String, server serverKey: String?) {
        note(chosen, for: sessionKey)
        if let serverKey { note(chosen, for: serverKey) }
    }

    /// The key of the server at `address` for `offer` (nil without an address): `@address port offer`, which no
    /// session key (`host port name offer`) can equal.
    static func serverKey(_ address: SocketAddress?, offer: [String]) -> String? {
        guard let address, let ip = address.ipAddress else { return nil }
        return "@\(ip) \(address.port ?? 0) \(offer.joined(separator: ","))"
    }

    func note(_ chosen: String?, for key: String) {
        choices.withLockedValue { choices in
            if choices.count >= Self.limit && choices[key] == nil { choices.removeAll(keepingCapacity: true) }
            choices[key] = .some(chosen)
        }
    }
}

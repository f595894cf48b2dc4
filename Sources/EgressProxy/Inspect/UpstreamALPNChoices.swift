import NIOConcurrencyHelpers

/// What each destination's upstream chose from an ALPN offer the last time (by the session key: CONNECT host and port,
/// the name verified, the offer): an inspected client's handshake is made with it before the upstream chooses again
/// (`InspectionStartHandler`). A wrong guess costs the client's handshake made twice, never a wrong answer. Bounded:
/// cleared when full.
final class UpstreamALPNChoices: Sendable {
    private let choices = NIOLockedValueBox<[String: String?]>([:])
    static let limit = 4096

    /// The protocol chosen last time (`.some(nil)`: none), or nil when this destination has not been seen.
    func last(for key: String) -> String?? {
        choices.withLockedValue { $0[key] }
    }

    func note(_ chosen: String?, for key: String) {
        choices.withLockedValue { choices in
            if choices.count >= Self.limit && choices[key] == nil { choices.removeAll(keepingCapacity: true) }
            choices[key] = .some(chosen)
        }
    }
}

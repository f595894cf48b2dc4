import Logging
import Synchronization

/// Hints for whoever runs the proxy, each logged once per process: the first time something happens that a new
/// setup usually meets because a setting is missing (a destination on the local network refused, an upstream
/// whose certificate does not verify), the log names the setting. Once, so a busy proxy's log is not flooded.
final class OperatorHints: Sendable {
    enum Hint: Hashable, Sendable {
        /// The destination guard refused a private or local address.
        case privateDestination
        /// An inspected upstream's certificate did not verify.
        case upstreamNotVerified
        /// An inspected upstream asked for a client certificate (mutual TLS).
        case upstreamRequiresClientCertificate
    }

    private let given = Mutex<Set<Hint>>([])

    /// Logs `message` at notice level unless `hint` was given already.
    func give(_ hint: Hint, _ message: @autoclosure () -> Logger.Message, to logger: Logger) {
        guard given.withLock({ $0.insert(hint).inserted }) else { return }
        logger.notice(message())
    }
}

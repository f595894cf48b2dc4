import AccessControl
import NIOConcurrencyHelpers

/// The settings SIGHUP may replace: the inspection CA and host lists, the allowed client ranges and the proxy
/// credentials. Each new connection takes the current snapshot when it is accepted, and a tunnel or an inspected
/// connection keeps what it started with, so a reload never drops one; a request or a CONNECT that comes later on a
/// client connection accepted before the reload reads the current credentials and inspection.
final class LiveSettings: Sendable {
    struct Snapshot: Sendable {
        var inspection: Inspection?
        var allowedClients: [CIDR]?
        var credentials: ProxyCredentials?
    }

    private let state: NIOLockedValueBox<Snapshot>

    init(_ snapshot: Snapshot) {
        state = NIOLockedValueBox(snapshot)
    }

    var current: Snapshot { state.withLockedValue { $0 } }

    func replace(_ snapshot: Snapshot) {
        state.withLockedValue { $0 = snapshot }
    }
}

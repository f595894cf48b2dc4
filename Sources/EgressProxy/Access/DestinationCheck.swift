import AccessControl
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The destination guard as the connection handlers use it: on `SocketAddress`es, with the proxy's listeners
/// filled in once they are bound (port 0 becomes a real port only then).
final class DestinationCheck: Sendable {
    private let base: DestinationGuard
    private let state: NIOLockedValueBox<DestinationGuard>
    /// Ports CONNECT may reach; nil for any.
    let connectPorts: [ClosedRange<Int>]?

    init(_ configuration: ProxyConfiguration) {
        var localAddresses: [IPAddress] = []
        if let devices = try? System.enumerateDevices() {
            for device in devices {
                if let ip = device.address?.ipAddress, let address = IPAddress(ip) { localAddresses.append(address) }
            }
        }
        base = DestinationGuard(
            allowedRanges: configuration.allowPrivateRanges,
            allowedNames: configuration.allowPrivateNames,
            localAddresses: localAddresses
        )
        state = NIOLockedValueBox(base)
        connectPorts = configuration.connectPorts
    }

    /// Records a bound listener, so the proxy never dials itself.
    func addListener(_ address: SocketAddress?) {
        guard let address, let port = address.port, let ip = address.ipAddress, let parsed = IPAddress(ip) else { return }
        let wildcard = parsed.bytes.allSatisfy { $0 == 0 }
        state.withLockedValue { $0.listeners.append(.init(address: wildcard ? nil : parsed, port: port)) }
    }

    /// Why the proxy must not dial `address` for a client that asked for `host`; nil when it may.
    func check(_ address: SocketAddress, host: String) -> DestinationGuard.Denial? {
        guard let ip = address.ipAddress, let parsed = IPAddress(ip), let port = address.port else {
            return DestinationGuard.Denial(reason: "not an IP address")
        }
        return state.withLockedValue { $0 }.check(parsed, port: port, host: host)
    }

    /// Whether `address` is one of this proxy's listeners (a transparent connection redirected back to it).
    func isOwnListener(_ address: SocketAddress) -> Bool {
        guard let ip = address.ipAddress, let parsed = IPAddress(ip), let port = address.port else { return false }
        return state.withLockedValue { $0 }.isOwnListener(parsed, port: port)
    }

    /// The addresses of `addresses` that may be dialled, or the first denial when none may.
    func filter(_ addresses: [SocketAddress], host: String) -> (allowed: [SocketAddress], denial: DestinationGuard.Denial?) {
        let guardian = state.withLockedValue { $0 }
        var allowed: [SocketAddress] = []
        var denial: DestinationGuard.Denial? = nil
        for address in addresses {
            guard let ip = address.ipAddress, let parsed = IPAddress(ip), let port = address.port else { continue }
            if let refused = guardian.check(parsed, port: port, host: host) {
                denial = denial ?? refused
            } else {
                allowed.append(address)
            }
        }
        return (allowed, denial)
    }

    /// Whether CONNECT may go to `port`.
    func connectPortAllowed(_ port: Int) -> Bool {
        connectPorts.map { ranges in ranges.contains { $0.contains(port) } } ?? true
    }
}

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

    /// When the machine's addresses were last read: they are read again at most this often, as the guard is
    /// asked (an address can come later: DHCP, a cloud interface attached to a running VM).
    private let addressesRead: NIOLockedValueBox<NIODeadline>
    private static let rereadAddressesAfter = TimeAmount.seconds(10)

    init(_ configuration: ProxyConfiguration) {
        base = DestinationGuard(
            allowedRanges: configuration.allowPrivateRanges,
            allowedNames: configuration.allowPrivateNames,
            deniedRanges: configuration.denyDestinationRanges,
            localAddresses: Self.machineAddresses()
        )
        state = NIOLockedValueBox(base)
        addressesRead = NIOLockedValueBox(.now())
        connectPorts = configuration.connectPorts
    }

    /// Every address of every interface of the machine.
    static func machineAddresses() -> [IPAddress] {
        var addresses: [IPAddress] = []
        for device in (try? System.enumerateDevices()) ?? [] {
            if let ip = device.address?.ipAddress, let address = IPAddress(ip), !addresses.contains(address) {
                addresses.append(address)
            }
        }
        return addresses
    }

    /// The guard, with the machine's addresses read again when they are older than `rereadAddressesAfter`.
    private var current: DestinationGuard {
        let now = NIODeadline.now()
        let due = addressesRead.withLockedValue { read in
            guard now - read >= Self.rereadAddressesAfter else { return false }
            read = now
            return true
        }
        if due {
            let addresses = Self.machineAddresses()
            return state.withLockedValue { guardian in
                guardian.localAddresses = addresses
                return guardian
            }
        }
        return state.withLockedValue { $0 }
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
        return current.check(parsed, port: port, host: host)
    }

    /// Why a connection just made to `host` must be closed: it reached the machine itself (see
    /// `DestinationGuard.checkConnected`); nil when it may be used.
    func checkConnected(_ channel: any Channel, host: String) -> DestinationGuard.Denial? {
        guard let localIP = channel.localAddress?.ipAddress, let local = IPAddress(localIP),
            let remoteAddress = channel.remoteAddress, let remoteIP = remoteAddress.ipAddress,
            let remote = IPAddress(remoteIP), let port = remoteAddress.port,
            DestinationGuard.sameAddress(local, remote)  // almost never: no lock taken for the others
        else { return nil }
        return current.checkConnected(local: local, remote: remote, port: port, host: host)
    }

    /// Whether `address` is one of this proxy's listeners (a transparent connection redirected back to it).
    func isOwnListener(_ address: SocketAddress) -> Bool {
        guard let ip = address.ipAddress, let parsed = IPAddress(ip), let port = address.port else { return false }
        return current.isOwnListener(parsed, port: port)
    }

    /// The addresses of `addresses` that may be dialled, or the first denial when none may.
    func filter(_ addresses: [SocketAddress], host: String) -> (allowed: [SocketAddress], denial: DestinationGuard.Denial?) {
        let guardian = current
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

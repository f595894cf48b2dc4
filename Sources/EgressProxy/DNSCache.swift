import NIOConcurrencyHelpers
import NIOCore

/// Remembers recent name lookups for a few seconds, so an agent that opens many connections to the same API
/// host does not pay for a lookup on each (Envoy and others do the same). Only answers are kept, never
/// failures; `getaddrinfo` reports no DNS TTL, so the lifetime is the configured one, short by default.
final class DNSCache: Sendable {
    private struct Entry {
        var ipv4: [SocketAddress]
        var ipv6: [SocketAddress]
        var expires: NIODeadline
    }

    private let entries = NIOLockedValueBox([String: Entry]())
    private let ttl: TimeAmount
    private let capacity: Int

    init(ttl: TimeAmount, capacity: Int = 4096) {
        self.ttl = ttl
        self.capacity = capacity
    }

    var isEnabled: Bool { ttl > .zero }

    /// The cached addresses for `host`, with `port` filled in; `nil` when absent or expired.
    func lookUp(host: String, port: Int) -> (ipv4: [SocketAddress], ipv6: [SocketAddress])? {
        guard isEnabled else { return nil }
        let now = NIODeadline.now()
        guard let entry = entries.withLockedValue({ $0[host] }), entry.expires > now else { return nil }
        func withPort(_ addresses: [SocketAddress]) -> [SocketAddress] {
            addresses.map { address in
                var address = address
                address.port = port
                return address
            }
        }
        return (withPort(entry.ipv4), withPort(entry.ipv6))
    }

    func store(host: String, ipv4: [SocketAddress], ipv6: [SocketAddress]) {
        guard isEnabled, !(ipv4.isEmpty && ipv6.isEmpty) else { return }
        let now = NIODeadline.now()
        let entry = Entry(ipv4: ipv4, ipv6: ipv6, expires: now + ttl)
        entries.withLockedValue { entries in
            if entries.count >= capacity && entries[host] == nil {
                entries = entries.filter { $0.value.expires > now }
                if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            }
            entries[host] = entry
        }
    }
}

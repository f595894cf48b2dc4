import NIOConcurrencyHelpers
import NIOCore

/// Remembers recent name lookups for a few seconds, so an agent that opens many connections to the same API
/// host does not pay for a lookup on each (Envoy and others do the same). Only answers are kept, never
/// failures; `getaddrinfo` reports no DNS TTL, so the lifetime is the configured one, short by default.
///
/// It also knows which names are being looked up now: a connection to a name whose lookup is under way waits
/// for that lookup's answer instead of starting another (`join`, `finish`), whether or not answers are kept. A
/// burst of connections to a new name costs one lookup, not one per connection, and an agent retrying a name
/// whose DNS server does not answer holds one of the lookup threads, not all of them.
final class DNSCache: Sendable {
    /// A lookup's outcome: the addresses of each family (with the port the lookup was made for), or why none.
    typealias Answer = Result<(ipv4: [SocketAddress], ipv6: [SocketAddress]), any Error>
    /// Called once with the answer of the lookup it waits for.
    typealias Waiter = @Sendable (Answer) -> Void

    private struct Entry {
        var ipv4: [SocketAddress]
        var ipv6: [SocketAddress]
        var expires: NIODeadline
    }

    private let entries = NIOLockedValueBox([String: Entry]())
    /// The names being looked up, each with what waits for its answer (the connection that started the lookup too).
    private let underWay = NIOLockedValueBox([String: [Waiter]]())
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
        return (Self.withPort(entry.ipv4, port), Self.withPort(entry.ipv6, port))
    }

    /// `addresses`, each with `port`.
    static func withPort(_ addresses: [SocketAddress], _ port: Int) -> [SocketAddress] {
        addresses.map { address in
            var address = address
            address.port = port
            return address
        }
    }

    /// Adds `waiter` to those waiting for `host`'s answer. Returns true when no lookup of `host` was under way:
    /// the caller makes one and passes its answer to `finish`.
    func join(host: String, waiter: @escaping Waiter) -> Bool {
        underWay.withLockedValue { underWay in
            if underWay[host] != nil {
                underWay[host]!.append(waiter)
                return false
            }
            underWay[host] = [waiter]
            return true
        }
    }

    /// Ends the lookup of `host`: keeps a non-empty answer (first, so a connection that comes once the lookup is
    /// no longer under way finds it), then gives the answer to everything that waited for it (each sets its own
    /// port: `withPort`).
    func finish(host: String, _ answer: Answer) {
        if case .success(let addresses) = answer {
            store(host: host, ipv4: addresses.ipv4, ipv6: addresses.ipv6)
        }
        let waiters = underWay.withLockedValue { $0.removeValue(forKey: host) } ?? []
        for waiter in waiters { waiter(answer) }
    }

    /// The names being looked up now (for tests).
    var lookupsUnderWay: Int { underWay.withLockedValue { $0.count } }

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

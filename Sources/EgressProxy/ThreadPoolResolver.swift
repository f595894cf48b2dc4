import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Resolves names with one `getaddrinfo` per connection on a shared thread pool, for NIO's Happy Eyeballs.
///
/// NIO's default resolver runs every lookup of an event loop on one serial queue, so one slow DNS answer
/// holds up every other connection on that loop. Here lookups run side by side on the pool's threads, and a
/// name already being looked up for another connection is not looked up again: the connection waits for that
/// answer (`DNSCache.join`).
struct ThreadPoolResolver: Resolver, Sendable {
    /// Looks a name up, blocking: `getaddrinfo`, or a stand-in in tests.
    typealias LookUp = @Sendable (_ host: String, _ port: Int) -> DNSCache.Answer

    private let pool: NIOThreadPool
    private let cache: DNSCache
    private let eventLoop: any EventLoop
    private let v4: EventLoopPromise<[SocketAddress]>
    private let v6: EventLoopPromise<[SocketAddress]>
    private let check: DestinationCheck?
    private let lookUp: LookUp

    init(
        pool: NIOThreadPool, cache: DNSCache, eventLoop: any EventLoop, check: DestinationCheck? = nil,
        lookUp: @escaping LookUp = ThreadPoolResolver.system
    ) {
        self.pool = pool
        self.cache = cache
        self.eventLoop = eventLoop
        self.check = check
        self.lookUp = lookUp
        self.v4 = eventLoop.makePromise()
        self.v6 = eventLoop.makePromise()
    }

    /// Happy Eyeballs asks for AAAA first; that call starts the one lookup that answers both.
    func initiateAQuery(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        v4.futureResult
    }

    func initiateAAAAQuery(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        let (v4, v6, cache, check) = (self.v4, self.v6, self.cache, self.check)
        /// Answers both queries with the addresses the guard allows; when it allows none, with its reason.
        @Sendable func answer(_ ipv4: [SocketAddress], _ ipv6: [SocketAddress]) {
            guard let check else {
                v6.succeed(ipv6)
                v4.succeed(ipv4)
                return
            }
            let (allowed6, denied6) = check.filter(ipv6, host: host)
            let (allowed4, denied4) = check.filter(ipv4, host: host)
            if allowed6.isEmpty && allowed4.isEmpty, let denial = denied6 ?? denied4 {
                v6.fail(denial)
                v4.fail(denial)
            } else {
                v6.succeed(allowed6)
                v4.succeed(allowed4)
            }
        }
        if let cached = cache.lookUp(host: host, port: port) {
            answer(cached.ipv4, cached.ipv6)
            return v6.futureResult
        }
        let first = cache.join(host: host) { result in
            switch result {
            case .success(let addresses):
                answer(DNSCache.withPort(addresses.ipv4, port), DNSCache.withPort(addresses.ipv6, port))
            case .failure(let error):
                v6.fail(error)
                v4.fail(error)
            }
        }
        guard first else { return v6.futureResult }  // another connection's lookup of this name answers this one
        let lookUp = self.lookUp
        pool.submit { state in
            guard case .active = state else {
                cache.finish(host: host, .failure(ChannelError.ioOnClosedChannel))
                return
            }
            cache.finish(host: host, lookUp(host, port))
        }
        return v6.futureResult
    }

    /// `getaddrinfo` is blocking and cannot be cancelled; a late answer is simply not used.
    func cancelQueries() {}

    /// The system's resolver (`getaddrinfo`: /etc/hosts, DNS, as nsswitch.conf says), for both address families.
    static let system: LookUp = { host, port in lookUpWithGetaddrinfo(host: host, port: port) }

    private static func lookUpWithGetaddrinfo(host: String, port: Int) -> DNSCache.Answer {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_protocol = Int32(IPPROTO_TCP)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            return .failure(NameResolutionError(host: host, code: rc))
        }
        defer { freeaddrinfo(first) }
        var ipv4: [SocketAddress] = []
        var ipv6: [SocketAddress] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let entry = cursor {
            if let address = entry.pointee.ai_addr {
                switch entry.pointee.ai_family {
                case AF_INET:
                    ipv4.append(SocketAddress(UnsafeRawPointer(address).load(as: sockaddr_in.self), host: host))
                case AF_INET6:
                    ipv6.append(SocketAddress(UnsafeRawPointer(address).load(as: sockaddr_in6.self), host: host))
                default:
                    break
                }
            }
            cursor = entry.pointee.ai_next
        }
        return .success((ipv4: ipv4, ipv6: ipv6))
    }
}

/// `getaddrinfo` found no address for a name.
struct NameResolutionError: Error, Hashable, CustomStringConvertible {
    var host: String
    var code: Int32
    var description: String { "cannot resolve \(host): \(String(cString: gai_strerror(code)))" }
}

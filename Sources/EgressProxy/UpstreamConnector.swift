import AccessControl
import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NIOPosix

/// Opens TCP connections to destinations on the client's event loop (so both halves of a relay share one
/// thread). Names are resolved for both address families and raced (NIO's Happy Eyeballs); IP literals are
/// dialled directly.
struct UpstreamConnector {
    var connectTimeout: TimeAmount
    /// Where name lookups run.
    var resolverPool: NIOThreadPool
    var dnsCache: DNSCache
    /// The SSRF guard: every address is checked before it is dialled; nil in tests that build a connector alone.
    var destinationCheck: DestinationCheck?

    init(settings: ConnectionSettings) {
        self.connectTimeout = settings.connectTimeout
        self.resolverPool = settings.resolverPool
        self.dnsCache = settings.dnsCache
        self.destinationCheck = settings.destinationCheck
    }

    /// Why a dial failed, with the status the client gets.
    struct Failure: Error, Sendable, Hashable {
        /// 502 for refused, unreachable or unresolvable destinations; 504 for a timeout.
        var status: Int
        /// Short reason, for the log and the action: `connection refused`, `name resolution failed`, …
        var reason: String
        /// What the client is told, when it is less than `reason` (a refused name's address is not).
        var clientReason: String? = nil
        /// `Proxy-Status` error type (RFC 9209 §2.3).
        var proxyStatusError: String
        /// The proxy refused the destination (the guard or the port list): reported as `decision: block`.
        var blocked = false
        /// The guard refused it, and `KAIZEN_ALLOW_PRIVATE` could open it (`DestinationGuard.Denial.exceptionOpens`).
        var exceptionOpens = false

        static func denied(_ denial: DestinationGuard.Denial) -> Failure {
            Failure(
                status: 403, reason: "destination not allowed: \(denial.reason)",
                clientReason: denial.clientReason == denial.reason ? nil : "destination not allowed: \(denial.clientReason)",
                proxyStatusError: "destination_ip_prohibited", blocked: true, exceptionOpens: denial.exceptionOpens)
        }
    }

    func connect(
        to destination: Destination,
        on eventLoop: any EventLoop,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<any Channel> {
        refusingTheMachineItself(dial(destination, on: eventLoop, initializer: initializer), host: destination.host)
    }

    private func dial(
        _ destination: Destination,
        on eventLoop: any EventLoop,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<any Channel> {
        let bootstrap = bootstrap(on: eventLoop, initializer: initializer)
        if destination.isIPLiteral {
            do {
                let address = try SocketAddress(ipAddress: destination.host, port: destination.port)
                if let denial = destinationCheck?.check(address, host: destination.host) {
                    return eventLoop.makeFailedFuture(denial)
                }
                return bootstrap.connect(to: address)
            } catch {
                return eventLoop.makeFailedFuture(error)
            }
        }
        // A name with one cached address needs no race between address families.
        if let cached = dnsCache.lookUp(host: destination.host, port: destination.port),
            cached.ipv4.count + cached.ipv6.count == 1, let only = cached.ipv6.first ?? cached.ipv4.first
        {
            if let denial = destinationCheck?.check(only, host: destination.host) {
                return eventLoop.makeFailedFuture(denial)
            }
            return bootstrap.connect(to: only)
        }
        // The resolver hands Happy Eyeballs only the addresses the guard allows: what is checked is what is
        // dialled, from one lookup.
        return bootstrap
            .resolver(ThreadPoolResolver(pool: resolverPool, cache: dnsCache, eventLoop: eventLoop, check: destinationCheck))
            .connect(host: destination.host, port: destination.port)
    }

    /// Connects to `address` (one a connection to `host` reached before), checked again as an address of `host`,
    /// so an exception the guard makes for that name still applies.
    func connect(
        to address: SocketAddress,
        host: String,
        on eventLoop: any EventLoop,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<any Channel> {
        if let denial = destinationCheck?.check(address, host: host) {
            return eventLoop.makeFailedFuture(denial)
        }
        return refusingTheMachineItself(bootstrap(on: eventLoop, initializer: initializer).connect(to: address), host: host)
    }

    /// A connection that turns out to have reached the machine itself (an address it gained since the guard last
    /// read its addresses) is closed and fails as a refused destination.
    private func refusingTheMachineItself(
        _ connected: EventLoopFuture<any Channel>, host: String
    ) -> EventLoopFuture<any Channel> {
        guard let destinationCheck else { return connected }
        return connected.flatMapThrowing { channel in
            if let denial = destinationCheck.checkConnected(channel, host: host) {
                channel.close(promise: nil)
                throw denial
            }
            return channel
        }
    }

    private func bootstrap(
        on eventLoop: any EventLoop, initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) -> ClientBootstrap {
        ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer(initializer)
    }

    /// Maps a dial error to what the client and the action are told.
    /// Whether `name` plausibly belongs to `address`: it resolves (through the same cache and threads as
    /// connections) to that address. A name that does not resolve does not belong.
    func name(_ name: String, resolvesTo address: String, on eventLoop: any EventLoop) -> EventLoopFuture<Bool> {
        let resolver = ThreadPoolResolver(pool: resolverPool, cache: dnsCache, eventLoop: eventLoop)
        let v6 = resolver.initiateAAAAQuery(host: name, port: 0)
        let v4 = resolver.initiateAQuery(host: name, port: 0)
        // Compared in canonical form: an address as the client wrote it (`2001:db8:0:0::1`) is the same address.
        let canonical = (try? SocketAddress(ipAddress: address, port: 0))?.ipAddress ?? address
        return v6.and(v4)
            .map { v6, v4 in (v6 + v4).contains { $0.ipAddress == canonical } }
            .recover { _ in false }
    }

    /// Connects for a tunnel. With `holdingReads` nothing is read from the upstream until a handler asks: a
    /// tunnel that may be inspected waits for its ClientHello, and a server that speaks first must not lose
    /// its bytes meanwhile.
    func connectTunnel(
        to destination: Destination,
        on eventLoop: any EventLoop,
        holdingReads: Bool
    ) -> EventLoopFuture<any Channel> {
        connect(to: destination, on: eventLoop) { channel in
            guard holdingReads else { return channel.eventLoop.makeSucceededVoidFuture() }
            return channel.setOption(ChannelOptions.autoRead, value: false)
        }
    }

    func classify(_ error: any Error) -> Failure {
        if let denial = error as? DestinationGuard.Denial {
            return .denied(denial)
        }
        if let connectionError = error as? NIOConnectionError, connectionError.connectionErrors.isEmpty,
            let denial = (connectionError.dnsAAAAError ?? connectionError.dnsAError) as? DestinationGuard.Denial
        {
            return .denied(denial)
        }
        if let channelError = error as? ChannelError, case .connectTimeout = channelError {
            return Failure(
                status: 504,
                reason: "connect timeout after \(Self.describe(connectTimeout))",
                proxyStatusError: "connection_timeout"
            )
        }
        if let connectionError = error as? NIOConnectionError {
            if let first = connectionError.connectionErrors.first {
                return classify(first.error)
            }
            return Failure(status: 502, reason: "name resolution failed", proxyStatusError: "dns_error")
        }
        if error is SocketAddressError || error is NameResolutionError {
            return Failure(status: 502, reason: "name resolution failed", proxyStatusError: "dns_error")
        }
        if let ioError = error as? IOError {
            switch ioError.errnoCode {
            case ECONNREFUSED:
                return Failure(status: 502, reason: "connection refused", proxyStatusError: "connection_refused")
            case ENETUNREACH:
                return Failure(status: 502, reason: "network unreachable", proxyStatusError: "destination_ip_unroutable")
            case EHOSTUNREACH:
                return Failure(status: 502, reason: "host unreachable", proxyStatusError: "destination_ip_unroutable")
            case ETIMEDOUT:
                return Failure(status: 504, reason: "connect timeout", proxyStatusError: "connection_timeout")
            default:
                return Failure(
                    status: 502,
                    reason: "connect failed (errno \(ioError.errnoCode))",
                    proxyStatusError: "proxy_internal_error"
                )
            }
        }
        return Failure(status: 502, reason: "connect failed", proxyStatusError: "proxy_internal_error")
    }

    static func describe(_ amount: TimeAmount) -> String {
        let ms = amount.nanoseconds / 1_000_000
        return ms % 1000 == 0 ? "\(ms / 1000)s" : "\(ms)ms"
    }
}

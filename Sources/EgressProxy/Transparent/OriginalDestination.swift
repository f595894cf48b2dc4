import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where a connection redirected by iptables (`-j REDIRECT`) was going: the kernel's conntrack entry, read with
/// `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6) on the accepted socket.
enum OriginalDestination {
    /// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` (linux/netfilter_ipv4.h, netfilter_ipv6/ip6_tables.h).
    static let optionName: SocketOptionName = 80

    /// The original destination of `channel`, or nil when it has none (not redirected, or not Linux).
    static func of(_ channel: any Channel) -> EventLoopFuture<SocketAddress?> {
        #if os(Linux)
        guard let provider = channel as? any SocketOptionProvider, let local = channel.localAddress else {
            return channel.eventLoop.makeSucceededFuture(nil)
        }
        switch local {
        case .v4:
            let future: EventLoopFuture<sockaddr_in> = provider.unsafeGetSocketOption(
                level: SocketOptionLevel(IPPROTO_IP), name: optionName)
            return future.map { SocketAddress(Optional($0)) }.recover { _ in nil }
        case .v6:
            let future: EventLoopFuture<sockaddr_in6> = provider.unsafeGetSocketOption(
                level: SocketOptionLevel(IPPROTO_IPV6), name: optionName)
            return future.map { SocketAddress(Optional($0)) }.recover { _ in nil }
        default:
            return channel.eventLoop.makeSucceededFuture(nil)
        }
        #else
        return channel.eventLoop.makeSucceededFuture(nil)
        #endif
    }
}

extension SocketAddress {
    fileprivate init?(_ address: sockaddr_in?) {
        guard let address else { return nil }
        self.init(address, host: "")
    }

    fileprivate init?(_ address: sockaddr_in6?) {
        guard let address else { return nil }
        self.init(address, host: "")
    }
}

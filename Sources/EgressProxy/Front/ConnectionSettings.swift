import AccessControl
import Interception
import NIOCore
import NIOPosix

/// The per-connection settings every handler reads, taken once from the configuration.
struct ConnectionSettings: Sendable {
    var connectTimeout: TimeAmount
    var idleTimeout: TimeAmount
    var clientHelloTimeout: TimeAmount
    var clientHelloLimit: Int
    /// The threads name lookups run on.
    var resolverPool: NIOThreadPool
    var dnsCache: DNSCache
    /// Present when a customer CA is configured: CONNECT tunnels may then be inspected.
    var inspection: Inspection?
    /// The SSRF guard and the CONNECT port list.
    var destinationCheck: DestinationCheck?
    /// With `KAIZEN_PROXY_AUTH`: every request must prove an agent.
    var credentials: ProxyCredentials?
    /// What SIGHUP may replace, read again where a setting must apply to open connections too.
    var live: LiveSettings?

    /// The credentials in force now (the reloaded ones, on a connection accepted before the reload too).
    var currentCredentials: ProxyCredentials? {
        // Without a credentials file at start there is none to reload: no lock per request then.
        guard credentials != nil, let live else { return credentials }
        return live.current.credentials
    }
    /// The inspection in force now: a CONNECT on a client connection accepted before a reload is decided by the
    /// reloaded CA, host lists and upstream trust, as a new connection would be.
    var currentInspection: Inspection? {
        guard let live else { return inspection }
        return live.current.inspection
    }

    /// Request line, header block, header count and header deadline.
    var requestHeadLimits: RequestHeadLimits

    /// These settings with the reloadable parts of `snapshot` (what a connection accepted now works with).
    func taking(_ snapshot: LiveSettings.Snapshot) -> ConnectionSettings {
        var settings = self
        settings.inspection = snapshot.inspection
        settings.credentials = snapshot.credentials
        return settings
    }

    /// Whether a tunnel to `host` may be inspected (a CA is configured and the host is not excluded outright).
    func mayInspect(_ host: String) -> Bool {
        inspection?.policy.mayInspect(connectHost: host) ?? false
    }

    init(_ configuration: ProxyConfiguration, resolverPool: NIOThreadPool, dnsCache: DNSCache) {
        self.resolverPool = resolverPool
        self.dnsCache = dnsCache
        self.connectTimeout = configuration.connectTimeout
        self.idleTimeout = configuration.idleTimeout
        self.clientHelloTimeout = configuration.clientHelloTimeout
        self.clientHelloLimit = configuration.clientHelloLimit
        self.credentials = configuration.proxyCredentials
        self.requestHeadLimits = configuration.requestHeadLimits
    }
}

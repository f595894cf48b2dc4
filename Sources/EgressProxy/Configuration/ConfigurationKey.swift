/// Every setting the proxy reads: its environment variable and the command-line flag that overrides it.
///
/// docs/configuration.md lists the same table with types and defaults; keep the two in step.
public struct ConfigurationKey: Sendable, Hashable {
    public let variable: String
    public let flag: String

    /// `PORT (or --port)`, as error messages name a setting.
    public var spelled: String { "\(variable) (or \(flag))" }

    public static let port = ConfigurationKey(variable: "PORT", flag: "--port")
    public static let listen = ConfigurationKey(variable: "KAIZEN_LISTEN", flag: "--listen")
    public static let agent = ConfigurationKey(variable: "KAIZEN_AGENT", flag: "--agent")
    public static let apiKey = ConfigurationKey(variable: "KAIZEN_API_KEY", flag: "--api-key-file")
    public static let apiURL = ConfigurationKey(variable: "KAIZEN_API_URL", flag: "--api-url")
    public static let apiCAFile = ConfigurationKey(variable: "KAIZEN_API_CA_FILE", flag: "--api-ca-file")
    public static let spoolDirectory = ConfigurationKey(variable: "KAIZEN_SPOOL_DIR", flag: "--spool-dir")
    public static let spoolMaxBytes = ConfigurationKey(variable: "KAIZEN_SPOOL_MAX_BYTES", flag: "--spool-max-bytes")
    public static let deliveryTimeout = ConfigurationKey(variable: "KAIZEN_DELIVERY_TIMEOUT", flag: "--delivery-timeout")
    public static let local = ConfigurationKey(variable: "KAIZEN_LOCAL", flag: "--local")
    public static let auditLog = ConfigurationKey(variable: "KAIZEN_AUDIT_LOG", flag: "--audit-log")
    public static let connectTimeout = ConfigurationKey(variable: "KAIZEN_CONNECT_TIMEOUT", flag: "--connect-timeout")
    public static let idleTimeout = ConfigurationKey(variable: "KAIZEN_IDLE_TIMEOUT", flag: "--idle-timeout")
    public static let dnsCacheTTL = ConfigurationKey(variable: "KAIZEN_DNS_CACHE_TTL", flag: "--dns-cache-ttl")
    public static let drainSeconds = ConfigurationKey(variable: "KAIZEN_DRAIN_SECONDS", flag: "--drain-seconds")
    public static let logLevel = ConfigurationKey(variable: "KAIZEN_LOG_LEVEL", flag: "--log-level")

    public static let caCertificate = ConfigurationKey(variable: "KAIZEN_CA_CERT", flag: "--ca-cert")
    public static let caKey = ConfigurationKey(variable: "KAIZEN_CA_KEY", flag: "--ca-key")
    public static let inspectHosts = ConfigurationKey(variable: "KAIZEN_INSPECT_HOSTS", flag: "--inspect-hosts")
    public static let passthroughHosts = ConfigurationKey(variable: "KAIZEN_PASSTHROUGH_HOSTS", flag: "--passthrough-hosts")
    public static let upstreamCAFile = ConfigurationKey(variable: "KAIZEN_UPSTREAM_CA_FILE", flag: "--upstream-ca-file")
    public static let reportQuery = ConfigurationKey(variable: "KAIZEN_REPORT_QUERY", flag: "--report-query")
    public static let inspectRequired = ConfigurationKey(variable: "KAIZEN_INSPECT_REQUIRED", flag: "--inspect-required")
    public static let pinnedPassthrough = ConfigurationKey(variable: "KAIZEN_PINNED_PASSTHROUGH", flag: "--pinned-passthrough")
    public static let upstreamIdleTimeout = ConfigurationKey(variable: "KAIZEN_UPSTREAM_IDLE_TIMEOUT", flag: "--upstream-idle-timeout")

    public static let transparentPort = ConfigurationKey(variable: "KAIZEN_TRANSPARENT_PORT", flag: "--transparent-port")

    public static let allowClients = ConfigurationKey(variable: "KAIZEN_ALLOW_CLIENTS", flag: "--allow-clients")
    public static let proxyAuth = ConfigurationKey(variable: "KAIZEN_PROXY_AUTH", flag: "--proxy-auth")
    public static let allowPrivate = ConfigurationKey(variable: "KAIZEN_ALLOW_PRIVATE", flag: "--allow-private")
    public static let denyDestinations = ConfigurationKey(variable: "KAIZEN_DENY_DESTINATIONS", flag: "--deny-destinations")
    public static let connectPorts = ConfigurationKey(variable: "KAIZEN_CONNECT_PORTS", flag: "--connect-ports")

    public static let maxRequestLine = ConfigurationKey(variable: "KAIZEN_MAX_REQUEST_LINE", flag: "--max-request-line")
    public static let maxHeaderBytes = ConfigurationKey(variable: "KAIZEN_MAX_HEADER_BYTES", flag: "--max-header-bytes")
    public static let maxHeaderFields = ConfigurationKey(variable: "KAIZEN_MAX_HEADER_FIELDS", flag: "--max-header-fields")
    public static let headerTimeout = ConfigurationKey(variable: "KAIZEN_HEADER_TIMEOUT", flag: "--header-timeout")
    public static let inspectHTTP2 = ConfigurationKey(variable: "KAIZEN_INSPECT_HTTP2", flag: "--inspect-http2")
    public static let http2MaxStreams = ConfigurationKey(variable: "KAIZEN_H2_MAX_STREAMS", flag: "--h2-max-streams")
    public static let http2BufferBytes = ConfigurationKey(variable: "KAIZEN_H2_BUFFER_BYTES", flag: "--h2-buffer-bytes")
    public static let maxConnections = ConfigurationKey(variable: "KAIZEN_MAX_CONNECTIONS", flag: "--max-connections")
    public static let eventLoops = ConfigurationKey(variable: "KAIZEN_EVENT_LOOPS", flag: "--event-loops")
    public static let memoryTrimInterval = ConfigurationKey(
        variable: "KAIZEN_MEMORY_TRIM_INTERVAL", flag: "--memory-trim-interval")
    public static let maxConnectionsPerClient = ConfigurationKey(
        variable: "KAIZEN_MAX_CONNECTIONS_PER_CLIENT", flag: "--max-connections-per-client")

    public static let auditMaxBytes = ConfigurationKey(variable: "KAIZEN_AUDIT_MAX_BYTES", flag: "--audit-max-bytes")
    public static let auditFsync = ConfigurationKey(variable: "KAIZEN_AUDIT_FSYNC", flag: "--audit-fsync")
    public static let stateDirectory = ConfigurationKey(variable: "KAIZEN_STATE_DIR", flag: "--state-dir")
    public static let baselineLearn = ConfigurationKey(variable: "KAIZEN_BASELINE_LEARN", flag: "--baseline-learn")
    public static let baselineMax = ConfigurationKey(variable: "KAIZEN_BASELINE_MAX", flag: "--baseline-max")

    public static let mode = ConfigurationKey(variable: "KAIZEN_MODE", flag: "--mode")
    public static let policyFail = ConfigurationKey(variable: "KAIZEN_POLICY_FAIL", flag: "--policy-fail")
    public static let policyRefresh = ConfigurationKey(variable: "KAIZEN_POLICY_REFRESH", flag: "--policy-refresh")

    public static let adminListen = ConfigurationKey(variable: "KAIZEN_ADMIN_LISTEN", flag: "--admin-listen")
    public static let logFormat = ConfigurationKey(variable: "KAIZEN_LOG_FORMAT", flag: "--log-format")

    public static let all: [ConfigurationKey] = [
        .port, .listen, .agent, .apiKey, .apiURL, .apiCAFile, .spoolDirectory, .spoolMaxBytes, .deliveryTimeout, .local, .auditLog, .connectTimeout, .idleTimeout, .dnsCacheTTL, .drainSeconds,
        .logLevel, .caCertificate, .caKey, .inspectHosts, .passthroughHosts, .upstreamCAFile, .reportQuery, .inspectRequired,
        .pinnedPassthrough, .upstreamIdleTimeout, .transparentPort, .auditMaxBytes, .auditFsync, .stateDirectory, .baselineLearn, .baselineMax,
        .allowClients, .proxyAuth, .allowPrivate, .denyDestinations, .connectPorts, .maxRequestLine, .maxHeaderBytes, .maxHeaderFields,
        .headerTimeout, .inspectHTTP2, .http2MaxStreams, .http2BufferBytes, .maxConnections, .maxConnectionsPerClient, .eventLoops, .memoryTrimInterval, .mode, .policyFail, .policyRefresh,
        .adminListen, .logFormat,
    ]
}

public import AccessControl
import Foundation
public import Interception
import Logging
import NIOCore

/// Everything the proxy needs to start, built from an environment dictionary so tests can pass their own.
///
/// | variable | type | default |
/// |---|---|---|
/// | `PORT` | integer 0–65535 (0 picks a free port) | 8080 |
/// | `KAIZEN_LISTEN` | IPv4 or IPv6 address | `127.0.0.1` |
/// | `KAIZEN_AGENT` | name, 1–128 printable characters | `egress-agent` |
/// | `KAIZEN_API_KEY` | secret | none |
/// | `KAIZEN_API_URL` | https URL (http only for loopback hosts) | `https://api.getkaizen.io` |
/// | `KAIZEN_LOCAL` | boolean (`1/true/yes/on`, `0/false/no/off`) | off |
/// | `KAIZEN_AUDIT_LOG` | file path | none |
/// | `KAIZEN_CONNECT_TIMEOUT` | duration (`10s`, `500ms`, `2m`; bare number = seconds) | `10s` |
/// | `KAIZEN_IDLE_TIMEOUT` | duration | `1h` |
/// | `KAIZEN_API_CA_FILE` | PEM file | none |
/// | `KAIZEN_SPOOL_DIR` | directory | `.kaizen/spool` |
/// | `KAIZEN_SPOOL_MAX_BYTES` | size (`256M`) | 256 MiB |
/// | `KAIZEN_DELIVERY_TIMEOUT` | duration, at least `1s` | `30s` |
/// | `KAIZEN_DNS_CACHE_TTL` | duration, or `0` to turn the cache off | `5s` |
/// | `KAIZEN_DRAIN_SECONDS` | integer seconds ≥ 0 | 10 |
/// | `KAIZEN_LOG_LEVEL` | trace, debug, info, notice, warning, error, critical | `info` |
/// | `KAIZEN_CA_CERT` | PEM file: the inspection CA, then any intermediates | none (no inspection) |
/// | `KAIZEN_CA_KEY` | PEM file, mode 0600: the CA's key | none |
/// | `KAIZEN_INSPECT_HOSTS` | host names and `*.suffix` patterns, comma-separated | all (with a CA) |
/// | `KAIZEN_PASSTHROUGH_HOSTS` | the same | none |
/// | `KAIZEN_UPSTREAM_CA_FILE` | PEM bundle trusted for inspected upstreams, besides the system store | none |
/// | `KAIZEN_REPORT_QUERY` | boolean | off |
/// | `KAIZEN_PINNED_PASSTHROUGH` | duration | `1h` |
/// | `KAIZEN_UPSTREAM_IDLE_TIMEOUT` | duration, or `0` never to reuse an upstream connection | `4s` |
/// | `KAIZEN_MEMORY_TRIM_INTERVAL` | duration, or `0` never to give freed heap memory back | `10s` |
/// | `KAIZEN_TRANSPARENT_PORT` | integer 1–65535 | none (no transparent listener) |
/// | `KAIZEN_AUDIT_MAX_BYTES` | size, or `0` never to rotate | 100 MiB |
/// | `KAIZEN_AUDIT_FSYNC` | duration, or `0` after every write | `1s` |
/// | `KAIZEN_STATE_DIR` | directory | `.kaizen/state` |
/// | `KAIZEN_BASELINE_LEARN` | duration, or `0` | `0` (flag new destinations at once) |
/// | `KAIZEN_BASELINE_MAX` | integer ≥ 0 (`0` turns the baseline off) | 100000 |
/// | `KAIZEN_ALLOW_CLIENTS` | CIDRs, comma-separated | any client |
/// | `KAIZEN_PROXY_AUTH` | file of `agent:token` lines, mode 0600 | none (no authentication) |
/// | `KAIZEN_ALLOW_PRIVATE` | CIDRs and host names (`*.suffix`), comma-separated | none |
/// | `KAIZEN_CONNECT_PORTS` | ports and ranges (`443,8443,9000-9100`) | any port |
/// | `KAIZEN_MAX_REQUEST_LINE` | size | `8K` |
/// | `KAIZEN_MAX_HEADER_BYTES` | size | `64K` |
/// | `KAIZEN_MAX_HEADER_FIELDS` | integer | 200 |
/// | `KAIZEN_HEADER_TIMEOUT` | duration | `10s` |
/// | `KAIZEN_MAX_CONNECTIONS` | integer | min(10000, (open-file limit − 64) / 2) |
/// | `KAIZEN_MAX_CONNECTIONS_PER_CLIENT` | integer, `0` for none | 1024 |
/// | `KAIZEN_MODE` | `observe` or `enforce` | `observe` |
/// | `KAIZEN_POLICY_FAIL` | `open` or `closed` | `open` |
/// | `KAIZEN_POLICY_REFRESH` | duration | `60s` |
/// | `KAIZEN_ADMIN_LISTEN` | `address:port` (`[::1]:9090`), or `off` | `127.0.0.1:9090` |
/// | `KAIZEN_LOG_FORMAT` | `text` or `json` | `text` |
public struct ProxyConfiguration: Sendable {
    public var listenAddress: String
    public var port: Int
    public var agent: String
    public var apiKey: APIKey?
    public var apiURL: String
    public var local: Bool
    public var auditLogPath: String?
    public var connectTimeout: TimeAmount
    public var idleTimeout: TimeAmount
    public var drainTimeout: TimeAmount
    /// Extra CA bundle trusted for the control plane (private control planes).
    public var apiCAFile: String?
    /// Where undelivered actions wait on disk.
    public var spoolDirectory: String
    public var spoolMaxBytes: Int64
    /// How long the control plane may take to answer one delivery request before it counts as unanswered.
    public var deliveryTimeout: TimeAmount
    /// How long a name lookup's answer is reused; zero turns the cache off.
    public var dnsCacheTTL: TimeAmount
    public var logLevel: Logger.Level
    /// How long the proxy waits for a tunnel's ClientHello before reporting without an SNI.
    public var clientHelloTimeout: TimeAmount = .seconds(10)
    /// How many bytes of a tunnel's first flight the proxy looks at for a ClientHello.
    public var clientHelloLimit: Int = 64 * 1024
    /// Threads that run blocking `getaddrinfo` lookups side by side.
    public var resolverThreads: Int = 8
    /// Inspection: the customer's CA (certificate file, key file); nil means nothing is ever decrypted.
    public var inspectionCA: (certificateFile: String, keyFile: String)?
    /// Inspection: only these destinations are inspected (nil: all).
    public var inspectHosts: HostPatterns?
    /// Inspection: these destinations are never inspected.
    public var passthroughHosts: HostPatterns?
    /// Inspection: an extra CA bundle trusted for upstreams.
    public var upstreamCAFile: String?
    /// Inspection: report a request's query string with its path.
    public var reportQuery: Bool
    /// With a CA: a connection that should be inspected but cannot be (pinning, mutual TLS, an ALPN or protocol
    /// inspection does not relay, no readable ClientHello, a name the CA may not sign) is refused, not passed through.
    public var inspectRequired: Bool
    /// Inspection: how long connections to a name whose client refused our certificate pass through untouched.
    public var pinnedPassthrough: TimeAmount
    /// Inspection: how long an idle, verified HTTP/1.1 upstream connection is kept for the next inspected connection
    /// of the same agent to the same destination; zero closes each with its client connection.
    public var upstreamIdleTimeout: TimeAmount
    /// Transparent mode: the port of the listener for connections redirected by iptables (nil: none).
    public var transparentPort: Int?
    /// How often the heap is read to give freed memory back to the system after a load (`HeapTrimPolicy`);
    /// zero never does.
    public var memoryTrimInterval: TimeAmount
    /// The audit log rotates when its file would grow past this; zero never rotates.
    public var auditMaxBytes: Int64
    /// How often the audit log is fsynced (and its head file rewritten); zero after every write.
    public var auditFsyncInterval: TimeAmount
    /// Where the proxy keeps state that outlives it (the destination baseline).
    public var stateDirectory: String
    /// Whether `KAIZEN_STATE_DIR` was set: then a directory the proxy cannot use stops it at start; the default
    /// one only costs the baseline's persistence (a warning).
    public var stateDirectoryIsSet: Bool
    /// New destinations are learned silently for this long after an agent is first seen.
    public var baselineLearningPeriod: TimeAmount
    /// Destinations remembered in all; zero turns new-destination detection off.
    public var baselineMaxEntries: Int
    /// Clients allowed to connect (nil: any); others are closed without a response.
    public var allowedClients: [CIDR]?
    /// With a credentials file, every request needs `Proxy-Authorization: Basic` and its user is the agent.
    public var proxyCredentials: ProxyCredentials?
    /// Exceptions to the destination guard: ranges and host names that may be reached although private.
    public var allowPrivateRanges: [CIDR]
    public var allowPrivateNames: [String]
    /// Ranges refused besides the guard's own: internal networks on public addresses. No exception opens them.
    public var denyDestinationRanges: [CIDR]
    /// Ports CONNECT may reach (nil: any).
    public var connectPorts: [ClosedRange<Int>]?
    /// Request line, header block, header count and header deadline.
    var requestHeadLimits: RequestHeadLimits
    /// Streams, header block size and buffered bytes of one inspected HTTP/2 connection.
    var http2Limits: HTTP2Limits
    /// Whether inspection relays HTTP/2 (on by default); off, inspection offers upstreams HTTP/1.1 only.
    public var inspectHTTP2: Bool
    /// Open client connections in all, and from one client address (0: no per-client limit).
    public var maxConnections: Int
    public var maxConnectionsPerClient: Int
    /// Event loops (one thread each) that carry every connection; nil: one per CPU the process may use (its cgroup's
    /// CPU limit and cpuset included), as SwiftNIO counts them.
    public var eventLoops: Int?
    /// Observe reports what the control plane's policy would decide; enforce refuses what it blocks.
    public var policyMode: PolicyMode
    /// With no policy ever loaded for an agent: block everything (closed) or nothing (open).
    public var policyFailClosed: Bool
    /// How often the policy is fetched again (with If-None-Match).
    public var policyRefresh: TimeAmount

    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); nil when off.
    public var adminListen: (host: String, port: Int)?
    /// Standard error's format: one human-readable line, or one JSON object, per log event.
    public var logFormat: LogFormat

    public enum LogFormat: String, Sendable, Hashable {
        case text, json
    }

    public static let defaultAdminListen = "127.0.0.1:9090"

    public enum PolicyMode: String, Sendable, Hashable {
        case observe, enforce
    }

    /// The environment (with flags applied) this configuration was read from: SIGHUP reads it again, with the
    /// files it names. It holds the API key: it never prints.
    var source = Source(values: [:])

    struct Source: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
        var values: [String: String]
        var description: String { "<environment>" }
        var debugDescription: String { description }
        var customMirror: Mirror { Mirror(self, children: []) }
    }

    /// An API key. Its description never shows the key.
    public struct APIKey: Sendable, Hashable, CustomStringConvertible {
        public let value: String
        public init(_ value: String) { self.value = value }
        public var description: String { "<redacted>" }
    }

    public static let defaultPort = 8080
    public static let defaultListenAddress = "127.0.0.1"
    public static let defaultAgent = "egress-agent"
    public static let defaultAPIURL = "https://api.getkaizen.io"

    /// Reads and checks every setting. Throws the first problem found, worded for a person to act on.
    public init(environment: [String: String]) throws(ConfigurationError) {
        self.source = Source(values: environment)
        // Set but empty is refused, never read as unset: `KAIZEN_ALLOW_CLIENTS=$RANGES` with RANGES unset would
        // otherwise open the proxy to every client, and `KAIZEN_AGENT=$NAME` report under the default name.
        for key in ConfigurationKey.all {
            if let raw = environment[key.variable], raw.allSatisfy(\.isWhitespace) {
                throw ConfigurationError(
                    variable: key.variable,
                    "\(key.variable) is set but empty: set \(key.spelled) to a value, or unset it for its default (docs/configuration.md)"
                )
            }
        }
        func value(_ key: ConfigurationKey) -> String? {
            guard let raw = environment[key.variable] else { return nil }
            let trimmed = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            return trimmed.isEmpty ? nil : trimmed
        }
        /// A comma-separated list given inline. Only commas (`KAIZEN_DENY_DESTINATIONS="$A,$B"` with both unset) is as
        /// empty as no value: refused.
        func inline(_ key: ConfigurationKey) throws(ConfigurationError) -> String? {
            guard let raw = value(key) else { return nil }
            guard raw.split(separator: ",").contains(where: { !$0.allSatisfy(\.isWhitespace) }) else {
                throw ConfigurationError(
                    variable: key.variable,
                    "\(key.variable)=\(Self.quoted(raw)) holds no entry: set \(key.spelled) to a list, or unset it for its default (docs/configuration.md)"
                )
            }
            return raw
        }
        /// A list setting: the value itself, or with `@PATH` the file's entries (one or more per line, comma-
        /// separated, `#` comments), which SIGHUP reads again.
        func list(_ key: ConfigurationKey) throws(ConfigurationError) -> String? {
            guard let raw = value(key) else { return nil }
            guard raw.hasPrefix("@") else { return try inline(key) }
            let path = String(raw.dropFirst())
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ConfigurationError(
                    variable: key.variable,
                    "\(key.variable)=@\(Self.quoted(path)): the file cannot be read: set \(key.spelled) to a readable file of entries, one per line, or to the entries themselves"
                )
            }
            let entries = text.split(whereSeparator: \.isNewline).map { line in
                line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            }
            // An empty file is an empty list, never "no restriction": a file emptied (or caught mid-rewrite) must
            // not open the proxy to every client or inspect every host.
            return entries.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.joined(separator: ",")
        }

        if let raw = value(.port) {
            guard let port = Self.wholeNumber(raw), (0...65535).contains(port) else {
                throw ConfigurationError(
                    variable: ConfigurationKey.port.variable,
                    "PORT=\(Self.quoted(raw)) is not a port: set \(ConfigurationKey.port.spelled) to a number from 1 to 65535 (0 picks a free port)"
                )
            }
            self.port = port
        } else {
            self.port = Self.defaultPort
        }

        let listen = value(.listen) ?? Self.defaultListenAddress
        let unbracketed = listen.hasPrefix("[") && listen.hasSuffix("]") ? String(listen.dropFirst().dropLast()) : listen
        guard (try? SocketAddress(ipAddress: unbracketed, port: 0)) != nil else {
            throw ConfigurationError(
                variable: ConfigurationKey.listen.variable,
                "KAIZEN_LISTEN=\(Self.quoted(listen)) is not an IP address: set \(ConfigurationKey.listen.spelled) to an address such as 127.0.0.1, ::1 or 0.0.0.0"
            )
        }
        self.listenAddress = unbracketed

        let agent = value(.agent) ?? Self.defaultAgent
        guard agent.count <= 128, agent.unicodeScalars.allSatisfy({ !$0.properties.isDefaultIgnorableCodePoint && $0.value >= 0x20 && $0.value != 0x7f }) else {
            throw ConfigurationError(
                variable: ConfigurationKey.agent.variable,
                "KAIZEN_AGENT has \(agent.count > 128 ? "more than 128 characters" : "control characters"): set \(ConfigurationKey.agent.spelled) to a short printable name such as my-agent"
            )
        }
        self.agent = agent

        if let key = value(.apiKey), key.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value >= 0x7f }) {
            // It goes into an Authorization header: a line break or space there fails every request (or, with a lax
            // HTTP stack, adds a header). The value is never shown.
            throw ConfigurationError(
                variable: ConfigurationKey.apiKey.variable,
                "KAIZEN_API_KEY holds a space, a line break, a control or a non-ASCII character, which an HTTP header cannot carry (its value is not shown): set \(ConfigurationKey.apiKey.spelled) to the key alone"
            )
        }
        self.apiKey = value(.apiKey).map(APIKey.init)

        let apiURL = value(.apiURL) ?? Self.defaultAPIURL
        try Self.checkAPIURL(apiURL)
        self.apiURL = apiURL.hasSuffix("/") ? String(apiURL.dropLast()) : apiURL

        self.local = try Self.boolean(value(.local), key: .local, default: false, meaning: "1 (local mode) or 0")

        self.auditLogPath = value(.auditLog)
        self.connectTimeout = try Self.duration(value(.connectTimeout), key: .connectTimeout, default: .seconds(10))
        self.idleTimeout = try Self.duration(value(.idleTimeout), key: .idleTimeout, default: .hours(1))

        if let raw = value(.dnsCacheTTL), raw == "0" {
            self.dnsCacheTTL = .zero
        } else {
            self.dnsCacheTTL = try Self.duration(value(.dnsCacheTTL), key: .dnsCacheTTL, default: .seconds(5))
        }

        if let raw = value(.drainSeconds) {
            guard let seconds = Self.wholeNumber(raw), seconds >= 0, seconds <= 86400 else {
                throw ConfigurationError(
                    variable: ConfigurationKey.drainSeconds.variable,
                    "KAIZEN_DRAIN_SECONDS=\(Self.quoted(raw)) is not a number of seconds: set \(ConfigurationKey.drainSeconds.spelled) to a whole number from 0 to 86400"
                )
            }
            self.drainTimeout = .seconds(Int64(seconds))
        } else {
            self.drainTimeout = .seconds(10)
        }

        if let raw = value(.logLevel) {
            guard let level = Logger.Level(rawValue: raw.lowercased()) else {
                throw ConfigurationError(
                    variable: ConfigurationKey.logLevel.variable,
                    "KAIZEN_LOG_LEVEL=\(Self.quoted(raw)) is not a log level: set \(ConfigurationKey.logLevel.spelled) to trace, debug, info, notice, warning, error or critical"
                )
            }
            self.logLevel = level
        } else {
            self.logLevel = .info
        }

        if let path = value(.apiCAFile) {
            guard access(path, R_OK) == 0 else {
                throw ConfigurationError(
                    variable: ConfigurationKey.apiCAFile.variable,
                    "KAIZEN_API_CA_FILE=\(Self.quoted(path)) cannot be read: set \(ConfigurationKey.apiCAFile.spelled) to a readable PEM bundle of the CA that signed your control plane's certificate"
                )
            }
            self.apiCAFile = path
        } else {
            self.apiCAFile = nil
        }
        self.spoolDirectory = value(.spoolDirectory) ?? ".kaizen/spool"
        if let raw = value(.spoolMaxBytes) {
            guard let bytes = Self.parseByteSize(raw), bytes >= 1 << 20 else {
                throw ConfigurationError(
                    variable: ConfigurationKey.spoolMaxBytes.variable,
                    "KAIZEN_SPOOL_MAX_BYTES=\(Self.quoted(raw)) is not a size of at least 1 MiB: set \(ConfigurationKey.spoolMaxBytes.spelled) to bytes or a size such as 256M or 2G"
                )
            }
            self.spoolMaxBytes = bytes
        } else {
            self.spoolMaxBytes = 256 << 20
        }
        self.deliveryTimeout = try Self.duration(value(.deliveryTimeout), key: .deliveryTimeout, default: .seconds(30))
        // Below a second, a control plane that answers normally but not at once (a busy host, a long round trip)
        // would have its answers given up and healthy actions set aside as failing.
        if let raw = value(.deliveryTimeout), deliveryTimeout < .seconds(1) {
            throw ConfigurationError(
                variable: ConfigurationKey.deliveryTimeout.variable,
                "KAIZEN_DELIVERY_TIMEOUT=\(Self.quoted(raw)) is shorter than 1s: set \(ConfigurationKey.deliveryTimeout.spelled) to at least 1s, such as 30s"
            )
        }

        let caCertificate = value(.caCertificate)
        let caKey = value(.caKey)
        switch (caCertificate, caKey) {
        case (let certificate?, let key?):
            self.inspectionCA = (certificate, key)
        case (nil, nil):
            self.inspectionCA = nil
        case (.some, nil):
            throw ConfigurationError(
                variable: ConfigurationKey.caKey.variable,
                "KAIZEN_CA_KEY is not set while KAIZEN_CA_CERT is: set \(ConfigurationKey.caKey.spelled) to the CA's private key, or unset KAIZEN_CA_CERT to run without inspection"
            )
        case (nil, .some):
            throw ConfigurationError(
                variable: ConfigurationKey.caCertificate.variable,
                "KAIZEN_CA_CERT is not set while KAIZEN_CA_KEY is: set \(ConfigurationKey.caCertificate.spelled) to the CA certificate, or unset KAIZEN_CA_KEY to run without inspection"
            )
        }
        // From a file, an empty inspect list inspects nothing (given inline, an empty value is unset: all).
        let inspectList = try list(.inspectHosts)
        self.inspectHosts = try Self.hostPatterns(inspectList, key: .inspectHosts)
            ?? (inspectList?.isEmpty == true ? HostPatterns.none : nil)
        self.passthroughHosts = try Self.hostPatterns(list(.passthroughHosts), key: .passthroughHosts)
        if let path = value(.upstreamCAFile) {
            guard access(path, R_OK) == 0 else {
                throw ConfigurationError(
                    variable: ConfigurationKey.upstreamCAFile.variable,
                    "KAIZEN_UPSTREAM_CA_FILE=\(Self.quoted(path)) cannot be read: set \(ConfigurationKey.upstreamCAFile.spelled) to a readable PEM bundle of the CAs your private upstreams use"
                )
            }
            self.upstreamCAFile = path
        } else {
            self.upstreamCAFile = nil
        }
        self.reportQuery = try Self.boolean(
            value(.reportQuery), key: .reportQuery, default: false, meaning: "1 (report query strings) or 0")
        self.inspectRequired = try Self.boolean(
            value(.inspectRequired), key: .inspectRequired, default: false,
            meaning: "1 (refuse what cannot be inspected) or 0 (pass it through, reported)")
        if inspectRequired && inspectionCA == nil {
            throw ConfigurationError(
                variable: ConfigurationKey.inspectRequired.variable,
                "KAIZEN_INSPECT_REQUIRED is on but no inspection CA is set: set KAIZEN_CA_CERT and KAIZEN_CA_KEY, or unset \(ConfigurationKey.inspectRequired.spelled)"
            )
        }
        self.pinnedPassthrough = try Self.duration(value(.pinnedPassthrough), key: .pinnedPassthrough, default: .hours(1))
        if let raw = value(.memoryTrimInterval), raw == "0" {
            self.memoryTrimInterval = .zero
        } else {
            self.memoryTrimInterval = try Self.duration(
                value(.memoryTrimInterval), key: .memoryTrimInterval, default: .seconds(10))
        }
        if let raw = value(.upstreamIdleTimeout), raw == "0" {
            self.upstreamIdleTimeout = .zero
        } else {
            self.upstreamIdleTimeout = try Self.duration(
                value(.upstreamIdleTimeout), key: .upstreamIdleTimeout, default: .seconds(4))
        }

        if let raw = value(.transparentPort) {
            guard let port = Self.wholeNumber(raw), (1...65535).contains(port) else {
                throw ConfigurationError(
                    variable: ConfigurationKey.transparentPort.variable,
                    "KAIZEN_TRANSPARENT_PORT=\(Self.quoted(raw)) is not a port: set \(ConfigurationKey.transparentPort.spelled) to the port iptables redirects to, such as 15001"
                )
            }
            guard port != self.port else {
                throw ConfigurationError(
                    variable: ConfigurationKey.transparentPort.variable,
                    "KAIZEN_TRANSPARENT_PORT is the same as PORT (\(port)): give the transparent listener its own port, such as 15001"
                )
            }
            self.transparentPort = port
        } else {
            self.transparentPort = nil
        }

        if let raw = value(.auditMaxBytes) {
            guard let bytes = raw == "0" ? 0 : Self.parseByteSize(raw), bytes == 0 || bytes >= 64 << 10 else {
                throw ConfigurationError(
                    variable: ConfigurationKey.auditMaxBytes.variable,
                    "KAIZEN_AUDIT_MAX_BYTES=\(Self.quoted(raw)) is not a size of at least 64K: set \(ConfigurationKey.auditMaxBytes.spelled) to a size such as 100M, or 0 never to rotate"
                )
            }
            self.auditMaxBytes = bytes
        } else {
            self.auditMaxBytes = 100 << 20
        }
        if value(.auditFsync) == "0" {
            self.auditFsyncInterval = .zero
        } else {
            self.auditFsyncInterval = try Self.duration(value(.auditFsync), key: .auditFsync, default: .seconds(1))
        }
        self.stateDirectory = value(.stateDirectory) ?? ".kaizen/state"
        self.stateDirectoryIsSet = value(.stateDirectory) != nil
        if value(.baselineLearn) == "0" {
            self.baselineLearningPeriod = .zero
        } else {
            self.baselineLearningPeriod = try Self.duration(value(.baselineLearn), key: .baselineLearn, default: .zero)
        }
        if let raw = value(.baselineMax) {
            guard let count = Self.wholeNumber(raw), count >= 0, count <= 10_000_000 else {
                throw ConfigurationError(
                    variable: ConfigurationKey.baselineMax.variable,
                    "KAIZEN_BASELINE_MAX=\(Self.quoted(raw)) is not a count: set \(ConfigurationKey.baselineMax.spelled) to a whole number of destinations up to 10000000, or 0 to turn new-destination detection off"
                )
            }
            self.baselineMaxEntries = count
        } else {
            self.baselineMaxEntries = 100_000
        }

        if let raw = try list(.allowClients) {
            let (ranges, invalid) = CIDR.parseList(raw)
            guard invalid.isEmpty, !ranges.isEmpty else {
                throw ConfigurationError(
                    variable: ConfigurationKey.allowClients.variable,
                    "KAIZEN_ALLOW_CLIENTS has \(invalid.isEmpty ? "no range" : "\(Self.quoted(invalid[0])), which is not an address or range"): set \(ConfigurationKey.allowClients.spelled) to comma-separated CIDRs such as 10.0.0.0/8,fd00::/8"
                )
            }
            self.allowedClients = ranges
        } else {
            self.allowedClients = nil
        }
        if let path = value(.proxyAuth) {
            do {
                self.proxyCredentials = try ProxyCredentials.load(path: path)
            } catch {
                throw ConfigurationError(
                    variable: ConfigurationKey.proxyAuth.variable,
                    "KAIZEN_PROXY_AUTH: \(error): set \(ConfigurationKey.proxyAuth.spelled) to a file of agent:token lines (tokens of 16 characters or more), mode 0600"
                )
            }
        } else {
            self.proxyCredentials = nil
        }
        self.allowPrivateRanges = []
        self.allowPrivateNames = []
        if let raw = try inline(.allowPrivate) {
            for entry in raw.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !entry.isEmpty {
                let unbracketed = entry.replacingOccurrences(of: "[", with: "").replacingOccurrences(of: "]", with: "")
                if let range = CIDR(unbracketed) {
                    self.allowPrivateRanges.append(range)
                } else if Self.isHostPattern(entry) {
                    self.allowPrivateNames.append(entry.lowercased())
                } else {
                    throw ConfigurationError(
                        variable: ConfigurationKey.allowPrivate.variable,
                        "KAIZEN_ALLOW_PRIVATE has \(Self.quoted(entry)), which is neither a range nor a host name: set \(ConfigurationKey.allowPrivate.spelled) to CIDRs and host names such as 10.1.0.0/16,internal.example,*.corp.example"
                    )
                }
            }
        }
        self.denyDestinationRanges = []
        if let raw = try inline(.denyDestinations) {
            for entry in raw.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !entry.isEmpty {
                let unbracketed = entry.replacingOccurrences(of: "[", with: "").replacingOccurrences(of: "]", with: "")
                guard let range = CIDR(unbracketed) else {
                    throw ConfigurationError(
                        variable: ConfigurationKey.denyDestinations.variable,
                        "KAIZEN_DENY_DESTINATIONS has \(Self.quoted(entry)), which is not an address range: set \(ConfigurationKey.denyDestinations.spelled) to CIDRs such as 2600:1f18:4a2b::/56,198.51.100.0/24 (host names belong in control-plane policies)"
                    )
                }
                self.denyDestinationRanges.append(range)
            }
        }
        if let raw = value(.connectPorts) {
            guard let ports = Self.parsePorts(raw) else {
                throw ConfigurationError(
                    variable: ConfigurationKey.connectPorts.variable,
                    "KAIZEN_CONNECT_PORTS=\(Self.quoted(raw)) is not a list of ports: set \(ConfigurationKey.connectPorts.spelled) to ports and ranges such as 443,8443,9000-9100"
                )
            }
            self.connectPorts = ports
        } else {
            self.connectPorts = nil
        }

        var limits = RequestHeadLimits()
        limits.requestLine = try Self.count(value(.maxRequestLine), key: .maxRequestLine, default: 8 * 1024, range: 256...(1 << 20), sized: true)
        limits.headerBytes = try Self.count(value(.maxHeaderBytes), key: .maxHeaderBytes, default: 64 * 1024, range: 1024...(16 << 20), sized: true)
        limits.headerFields = try Self.count(value(.maxHeaderFields), key: .maxHeaderFields, default: 200, range: 8...10_000)
        limits.headerTimeout = try Self.duration(value(.headerTimeout), key: .headerTimeout, default: .seconds(10))
        self.requestHeadLimits = limits
        var http2 = HTTP2Limits()
        http2.maxHeaderListSize = limits.headerBytes
        http2.maxConcurrentStreams = try Self.count(
            value(.http2MaxStreams), key: .http2MaxStreams, default: 100, range: 1...10_000)
        http2.bufferBytes = try Self.count(
            value(.http2BufferBytes), key: .http2BufferBytes, default: 64 << 20, range: (256 << 10)...(1 << 30), sized: true)
        guard http2.streamWindow >= HTTP2Limits.minimumStreamWindow else {
            let needed = 8 * http2.maxConcurrentStreams * HTTP2Limits.minimumStreamWindow
            throw ConfigurationError(
                variable: ConfigurationKey.http2BufferBytes.variable,
                "KAIZEN_H2_BUFFER_BYTES=\(http2.bufferBytes) leaves each of KAIZEN_H2_MAX_STREAMS=\(http2.maxConcurrentStreams) streams less than a 16K window: set \(ConfigurationKey.http2BufferBytes.spelled) to at least \(needed) or lower KAIZEN_H2_MAX_STREAMS"
            )
        }
        self.http2Limits = http2
        self.inspectHTTP2 = try Self.boolean(
            value(.inspectHTTP2), key: .inspectHTTP2, default: true,
            meaning: "on (relay HTTP/2 inside inspection) or off (HTTP/1.1 only)")
        self.maxConnections = try Self.count(
            value(.maxConnections), key: .maxConnections, default: Self.defaultMaxConnections(), range: 1...10_000_000)
        self.maxConnectionsPerClient = try Self.count(
            value(.maxConnectionsPerClient), key: .maxConnectionsPerClient, default: 1024, range: 0...10_000_000)
        if let raw = value(.eventLoops) {
            self.eventLoops = try Self.count(raw, key: .eventLoops, default: 0, range: 1...1024)
        } else {
            self.eventLoops = nil
        }

        if let raw = value(.mode) {
            guard let mode = PolicyMode(rawValue: raw.lowercased()) else {
                throw ConfigurationError(
                    variable: ConfigurationKey.mode.variable,
                    "KAIZEN_MODE=\(Self.quoted(raw)) is not a mode: set \(ConfigurationKey.mode.spelled) to observe (report what the policy would block) or enforce (refuse it)"
                )
            }
            self.policyMode = mode
        } else {
            self.policyMode = .observe
        }
        switch value(.policyFail)?.lowercased() {
        case nil, "open": self.policyFailClosed = false
        case "closed": self.policyFailClosed = true
        case let raw?:
            throw ConfigurationError(
                variable: ConfigurationKey.policyFail.variable,
                "KAIZEN_POLICY_FAIL=\(Self.quoted(raw)) is neither open nor closed: set \(ConfigurationKey.policyFail.spelled) to open (allow while no policy was ever loaded) or closed (block)"
            )
        }
        self.policyRefresh = try Self.duration(value(.policyRefresh), key: .policyRefresh, default: .seconds(60))
        if policyMode == .enforce && apiKey == nil {
            throw ConfigurationError(
                variable: ConfigurationKey.mode.variable,
                "KAIZEN_MODE=enforce needs the control plane's policies: set KAIZEN_API_KEY, or set \(ConfigurationKey.mode.spelled) to observe"
            )
        }

        let admin = value(.adminListen) ?? Self.defaultAdminListen
        if ["off", "0", "none", "false"].contains(admin.lowercased()) {
            self.adminListen = nil
        } else {
            guard let parsed = Self.parseHostPort(admin), (try? SocketAddress(ipAddress: parsed.host, port: 0)) != nil
            else {
                throw ConfigurationError(
                    variable: ConfigurationKey.adminListen.variable,
                    "KAIZEN_ADMIN_LISTEN=\(Self.quoted(admin)) is not an address and port: set \(ConfigurationKey.adminListen.spelled) to one such as 127.0.0.1:9090 or [::]:9090, or off"
                )
            }
            guard parsed.port == 0 || parsed.port != self.port, parsed.port == 0 || parsed.port != self.transparentPort else {
                throw ConfigurationError(
                    variable: ConfigurationKey.adminListen.variable,
                    "KAIZEN_ADMIN_LISTEN uses the proxy's own port \(parsed.port): give the admin listener a port of its own, such as 9090"
                )
            }
            self.adminListen = parsed
        }
        if let raw = value(.logFormat) {
            guard let format = LogFormat(rawValue: raw.lowercased()) else {
                throw ConfigurationError(
                    variable: ConfigurationKey.logFormat.variable,
                    "KAIZEN_LOG_FORMAT=\(Self.quoted(raw)) is not a log format: set \(ConfigurationKey.logFormat.spelled) to text or json"
                )
            }
            self.logFormat = format
        } else {
            self.logFormat = .text
        }

        // Actions must go somewhere: to the control plane (a key), to standard output (local mode), or both.
        if !local && apiKey == nil {
            throw ConfigurationError(
                variable: ConfigurationKey.apiKey.variable,
                "KAIZEN_API_KEY is not set: set KAIZEN_API_KEY to your org API key, or run with --local (KAIZEN_LOCAL=1) to write actions to standard output without an account"
            )
        }
    }

    /// `min(10000, (open-file limit − 64) / 2)`: each proxied connection holds two descriptors.
    static func defaultMaxConnections() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 10_000 }
        let files = Int(min(limit.rlim_cur, 1 << 30))  // RLIM_INFINITY is the largest value: capped here
        return max(16, min(10_000, (files - 64) / 2))
    }

    /// `127.0.0.1:9090`, `[::1]:9090`; nil when it is not an address and a port (0–65535).
    static func parseHostPort(_ text: String) -> (host: String, port: Int)? {
        let host: String
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon else { return nil }
            host = String(text[..<colon])
            portText = text[text.index(after: colon)...]
        }
        guard let port = Int(portText), (0...65535).contains(port), !host.isEmpty else { return nil }
        return (host, port)
    }

    /// A boolean setting (`1 true yes on`, `0 false no off`), `defaultValue` when unset; `meaning` says what the
    /// two values do, for the error.
    private static func boolean(
        _ raw: String?, key: ConfigurationKey, default defaultValue: Bool, meaning: String
    ) throws(ConfigurationError) -> Bool {
        guard let raw else { return defaultValue }
        guard let value = parseBool(raw) else {
            throw ConfigurationError(
                variable: key.variable, "\(key.variable)=\(quoted(raw)) is not a boolean: set \(key.spelled) to \(meaning)")
        }
        return value
    }

    /// Decimal digits only: `Int` would also take `+3430` or `-0`, which no one means as a port or a count.
    static func wholeNumber(_ raw: String) -> Int? {
        guard !raw.isEmpty, raw.count <= 18, raw.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return Int(raw)
    }

    /// A whole number in `range` (with `sized`, also `8K`, `1M`).
    private static func count(
        _ raw: String?, key: ConfigurationKey, default defaultValue: Int, range: ClosedRange<Int>, sized: Bool = false
    ) throws(ConfigurationError) -> Int {
        guard let raw else { return defaultValue }
        let parsed = sized ? parseByteSize(raw).map { Int($0) } : wholeNumber(raw)
        guard let value = parsed, range.contains(value) else {
            throw ConfigurationError(
                variable: key.variable,
                "\(key.variable)=\(quoted(raw)) is not \(sized ? "a size" : "a whole number") from \(range.lowerBound) to \(range.upperBound): set \(key.spelled) to one\(sized ? ", such as 8K or 64K" : "")"
            )
        }
        return value
    }

    /// A host name, or `*.` and one: letters, digits, `-`, `.` and `_`.
    static func isHostPattern(_ text: String) -> Bool {
        let name = text.hasPrefix("*.") ? String(text.dropFirst(2)) : text
        return !name.isEmpty && name.count <= 253 && !name.hasPrefix(".") && !name.hasSuffix(".") && !name.contains("..")
            && name.unicodeScalars.allSatisfy { $0.properties.isASCIIHexDigit || ("a"..."z").contains($0) || ("A"..."Z").contains($0) || "-._".unicodeScalars.contains($0) }
            && name.contains(where: { $0.isLetter })
    }

    /// `443,8443,9000-9100` as ranges; nil when any part is not a port or a range of ports.
    static func parsePorts(_ text: String) -> [ClosedRange<Int>]? {
        var ranges: [ClosedRange<Int>] = []
        for part in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !part.isEmpty {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count <= 2, let low = wholeNumber(String(bounds[0])), let high = wholeNumber(String(bounds.last!)), (1...65535).contains(low),
                (1...65535).contains(high), low <= high
            else { return nil }
            ranges.append(low...high)
        }
        return ranges.isEmpty ? nil : ranges
    }

    private static func hostPatterns(_ raw: String?, key: ConfigurationKey) throws(ConfigurationError) -> HostPatterns? {
        guard let raw else { return nil }
        do {
            let patterns = try HostPatterns(parsing: raw)
            return patterns.isEmpty ? nil : patterns
        } catch {
            throw ConfigurationError(
                variable: key.variable,
                "\(key.variable): \(error): set \(key.spelled) to comma-separated host names or *.suffix patterns, e.g. api.example.com,*.internal.example"
            )
        }
    }

    /// `1048576`, `512K`, `256M`, `2G` (binary units).
    static func parseByteSize(_ raw: String) -> Int64? {
        let units: [Character: Int64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        var digits = raw.uppercased()
        var scale: Int64 = 1
        if digits.hasSuffix("B") { digits.removeLast() }
        if let last = digits.last, let unit = units[last] {
            scale = unit
            digits.removeLast()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int64(digits),
            value <= Int64.max / scale
        else { return nil }
        return value * scale
    }

    /// The API URL must be https, except for a control plane on this machine.
    private static func checkAPIURL(_ raw: String) throws(ConfigurationError) {
        let key = ConfigurationKey.apiURL
        guard let components = URLComponents(string: raw), let scheme = components.scheme?.lowercased(),
            let host = components.host, !host.isEmpty
        else {
            throw ConfigurationError(
                variable: key.variable,
                "KAIZEN_API_URL=\(quoted(withoutUserInformation(raw))) is not a URL: set \(key.spelled) to an https URL such as \(defaultAPIURL)"
            )
        }
        guard components.user == nil, components.password == nil, components.query == nil, components.fragment == nil else {
            throw ConfigurationError(
                variable: key.variable,
                "KAIZEN_API_URL must not carry credentials, a query or a fragment: set \(key.spelled) to the control plane's base URL, and the key in KAIZEN_API_KEY"
            )
        }
        switch scheme {
        case "https":
            return
        case "http" where isLoopbackHost(host):
            return
        case "http":
            throw ConfigurationError(
                variable: key.variable,
                "KAIZEN_API_URL=\(quoted(raw)) uses http to a host that is not loopback, which would send the API key in the clear: use https"
            )
        default:
            throw ConfigurationError(
                variable: key.variable,
                "KAIZEN_API_URL=\(quoted(raw)) has scheme \(scheme): set \(key.spelled) to an https URL"
            )
        }
    }

    /// `localhost`, 127.0.0.0/8 in dotted decimal, or `::1` in any of its spellings (`[0:0:0:0:0:0:0:1]`).
    static func isLoopbackHost(_ host: String) -> Bool {
        let bare = host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host
        if bare.lowercased() == "localhost" { return true }
        if bare.contains(":") { return IPAddress(bare) == IPAddress("::1") }
        let parts = bare.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    static func parseBool(_ raw: String) -> Bool? {
        switch raw.lowercased() {
        case "1", "true", "yes", "on": true
        case "0", "false", "no", "off": false
        default: nil
        }
    }

    /// `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
    static func parseDuration(_ raw: String) -> TimeAmount? {
        let units: [(suffix: String, nanos: Int64)] = [
            ("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000),
            ("d", 86_400_000_000_000),
        ]
        var number = raw
        var scale: Int64 = 1_000_000_000
        for unit in units where raw.hasSuffix(unit.suffix) {
            let candidate = String(raw.dropLast(unit.suffix.count))
            if Int64(candidate) != nil {
                number = candidate
                scale = unit.nanos
                break
            }
        }
        guard let amount = Int64(number), amount > 0, amount <= Int64.max / scale else { return nil }
        return .nanoseconds(amount * scale)
    }

    private static func duration(
        _ raw: String?,
        key: ConfigurationKey,
        default defaultValue: TimeAmount
    ) throws(ConfigurationError) -> TimeAmount {
        guard let raw else { return defaultValue }
        guard let value = parseDuration(raw) else {
            throw ConfigurationError(
                variable: key.variable,
                "\(key.variable)=\(quoted(raw)) is not a duration: set \(key.spelled) to a positive value such as 10s, 500ms, 5m or 1h"
            )
        }
        return value
    }

    /// A value shown in an error, shortened and with control characters escaped.
    /// A URL as it may be shown: what comes before an `@` in it (user information: perhaps a key) replaced by `…`.
    /// For one too malformed to parse, so its parts are not known: everything up to the last `@`.
    static func withoutUserInformation(_ raw: String) -> String {
        guard let at = raw.lastIndex(of: "@") else { return raw }
        let start = raw.range(of: "://").map(\.upperBound) ?? raw.startIndex
        guard start <= at else { return "…" + raw[raw.index(after: at)...] }
        return raw[..<start] + "…" + raw[raw.index(after: at)...]
    }

    private static func quoted(_ raw: String) -> String {
        let short = raw.count > 64 ? String(raw.prefix(64)) + "…" : raw
        return "\"" + short.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? "?" : String($0) }.joined() + "\""
    }
}

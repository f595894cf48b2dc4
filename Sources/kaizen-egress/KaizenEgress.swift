import ArgumentParser
import CProcessHardening
import EgressProxy
import Foundation
import Logging
import NIOCore
import Policy
import ServiceLifecycle

@main
struct KaizenEgress: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kaizen-egress",
        abstract: "HTTP(S) forward proxy that reports every outbound connection of an agent as a connect action.",
        discussion: """
            Every option can also be set through the environment variable named in its help; the option wins.
            Local mode (--local) needs no account: actions are written as JSON lines to standard output.
            With no subcommand the proxy runs; `kaizen-egress run --help` lists its options.
            """,
        subcommands: [Run.self, CA.self, Probe.self, AuditCommand.self, ReportCommand.self],
        defaultSubcommand: Run.self
    )

    /// Before anything reads a secret: no core dump (RLIMIT_CORE 0, and not dumpable, which a core_pattern pipe does
    /// not ignore), no ptrace attach and no /proc/PID/environ read by other processes of the same user.
    static func main() async {
        var none = rlimit(rlim_cur: 0, rlim_max: 0)
        #if os(Linux)
        _ = setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &none)
        #else
        _ = setrlimit(RLIMIT_CORE, &none)
        #endif
        _ = kz_process_not_dumpable()
        do {
            var command = try parseAsRoot()
            if var asynchronous = command as? any AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

/// `kaizen-egress run`: the same as no subcommand.
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the proxy (the same as no subcommand).")

    @OptionGroup var options: RunOptions

    func run() async throws {
        try await options.runProxy()
    }
}

/// The proxy's settings as flags; each overrides the environment variable named in its help.
struct RunOptions: ParsableArguments {
    @Option(help: "Listen port; 0 picks a free one. (env PORT, default 8080)")
    var port: String?

    @Option(help: "Listen address, IPv4 or IPv6. (env KAIZEN_LISTEN, default 127.0.0.1)")
    var listen: String?

    @Option(help: "Agent name actions are reported under. (env KAIZEN_AGENT, default egress-agent)")
    var agent: String?

    @Option(
        help: """
            File holding the org API key; a file, not the key itself, so the key never shows in the process \
            list. (env KAIZEN_API_KEY holds the key itself, default none)
            """
    )
    var apiKeyFile: String?

    @Option(help: "Control plane base URL. (env KAIZEN_API_URL, default https://api.getkaizen.io)")
    var apiURL: String?

    @Option(help: "Extra CA bundle (PEM) trusted for the control plane. (env KAIZEN_API_CA_FILE)")
    var apiCAFile: String?

    @Option(help: "Where undelivered actions wait on disk. (env KAIZEN_SPOOL_DIR, default .kaizen/spool)")
    var spoolDir: String?

    @Option(help: "Spool size cap, e.g. 256M, 2G. (env KAIZEN_SPOOL_MAX_BYTES, default 256M)")
    var spoolMaxBytes: String?

    @Option(help: "How long the control plane may take to answer one delivery request, at least 1s, e.g. 30s. (env KAIZEN_DELIVERY_TIMEOUT, default 30s)")
    var deliveryTimeout: String?

    @Flag(help: "Local mode: write actions as JSON lines to standard output; no account needed. (env KAIZEN_LOCAL=1)")
    var local = false

    @Option(help: "Also append every action and close record to this file (mode 0600). (env KAIZEN_AUDIT_LOG)")
    var auditLog: String?

    @Option(help: "Only these clients may connect: CIDRs, comma-separated; others are closed unanswered. (env KAIZEN_ALLOW_CLIENTS, default any)")
    var allowClients: String?

    @Option(help: "File of agent:token lines (mode 0600); requests then need Proxy-Authorization: Basic, and the user is the agent. (env KAIZEN_PROXY_AUTH)")
    var proxyAuth: String?

    @Option(help: "Private destinations that may be reached anyway: CIDRs and host names (*.suffix). (env KAIZEN_ALLOW_PRIVATE, default none)")
    var allowPrivate: String?

    @Option(help: "Destinations refused besides the built-in private ranges (your internal networks on public addresses): CIDRs; no exception opens them. (env KAIZEN_DENY_DESTINATIONS, default none)")
    var denyDestinations: String?

    @Option(help: "Ports CONNECT may reach: ports and ranges, e.g. 443,8443,9000-9100. (env KAIZEN_CONNECT_PORTS, default any)")
    var connectPorts: String?

    @Option(help: "Longest request line, e.g. 8K; longer gets 414. (env KAIZEN_MAX_REQUEST_LINE, default 8K)")
    var maxRequestLine: String?

    @Option(help: "Largest header block after the request line; larger gets 431. (env KAIZEN_MAX_HEADER_BYTES, default 64K)")
    var maxHeaderBytes: String?

    @Option(help: "Most header fields in a request; more gets 431. (env KAIZEN_MAX_HEADER_FIELDS, default 200)")
    var maxHeaderFields: String?

    @Option(help: "Time to receive a request head; slower gets 408. (env KAIZEN_HEADER_TIMEOUT, default 10s)")
    var headerTimeout: String?

    @Option(help: "Relay HTTP/2 inside inspection (on), or offer upstreams HTTP/1.1 only (off). (env KAIZEN_INSPECT_HTTP2, default on)")
    var inspectHttp2: String?

    @Option(help: "Most concurrent streams on an inspected HTTP/2 connection; more are refused. (env KAIZEN_H2_MAX_STREAMS, default 100)")
    var h2MaxStreams: String?

    @Option(help: "Most bytes an inspected HTTP/2 connection may buffer; sets each stream's window. (env KAIZEN_H2_BUFFER_BYTES, default 64M)")
    var h2BufferBytes: String?

    @Option(help: "Most open client connections; past it new ones get 503. (env KAIZEN_MAX_CONNECTIONS, default min(10000, (open-file limit - 64) / 2))")
    var maxConnections: String?

    @Option(help: "Most open connections from one client address; 0 for no limit. (env KAIZEN_MAX_CONNECTIONS_PER_CLIENT, default 1024)")
    var maxConnectionsPerClient: String?

    @Option(help: "Rotate the audit log when a file would grow past this, e.g. 100M; 0 never. (env KAIZEN_AUDIT_MAX_BYTES, default 100M)")
    var auditMaxBytes: String?

    @Option(help: "fsync the audit log this often; 0 after every write. (env KAIZEN_AUDIT_FSYNC, default 1s)")
    var auditFsync: String?

    @Option(help: "Where state that outlives the proxy is kept (the destination baseline). (env KAIZEN_STATE_DIR, default .kaizen/state)")
    var stateDir: String?

    @Option(help: "Learn new destinations silently this long after an agent is first seen, e.g. 24h. (env KAIZEN_BASELINE_LEARN, default 0)")
    var baselineLearn: String?

    @Option(help: "Destinations remembered in the baseline; 0 turns new-destination detection off. (env KAIZEN_BASELINE_MAX, default 100000)")
    var baselineMax: String?

    @Option(help: "Upstream connect timeout, e.g. 10s, 500ms. (env KAIZEN_CONNECT_TIMEOUT, default 10s)")
    var connectTimeout: String?

    @Option(help: "Close tunnels and keep-alive connections idle this long. (env KAIZEN_IDLE_TIMEOUT, default 1h)")
    var idleTimeout: String?

    @Option(help: "Reuse a name lookup's answer this long; 0 turns it off. (env KAIZEN_DNS_CACHE_TTL, default 5s)")
    var dnsCacheTTL: String?

    @Option(help: "Seconds open connections get to finish on SIGTERM. (env KAIZEN_DRAIN_SECONDS, default 10)")
    var drainSeconds: String?

    @Option(help: "trace, debug, info, notice, warning, error or critical. (env KAIZEN_LOG_LEVEL, default info)")
    var logLevel: String?

    @Option(help: "Inspection CA certificate (PEM, then any intermediates); with --ca-key turns inspection on. (env KAIZEN_CA_CERT)")
    var caCert: String?

    @Option(help: "Inspection CA private key (PEM, mode 0600). (env KAIZEN_CA_KEY)")
    var caKey: String?

    @Option(help: "Inspect only these hosts: names and *.suffix patterns, comma-separated. (env KAIZEN_INSPECT_HOSTS, default all)")
    var inspectHosts: String?

    @Option(help: "Never inspect these hosts (names and *.suffix patterns). (env KAIZEN_PASSTHROUGH_HOSTS)")
    var passthroughHosts: String?

    @Option(help: "Extra CA bundle (PEM) trusted for inspected upstreams. (env KAIZEN_UPSTREAM_CA_FILE)")
    var upstreamCAFile: String?

    @Flag(help: "Report query strings with inspected paths. (env KAIZEN_REPORT_QUERY=1)")
    var reportQuery = false

    @Flag(help: "With a CA: refuse what should be inspected but cannot be (pinning, mutual TLS, no readable ClientHello, …) instead of passing it through. (env KAIZEN_INSPECT_REQUIRED=1)")
    var inspectRequired = false

    @Option(help: "How long a name whose client refused the minted certificate passes through. (env KAIZEN_PINNED_PASSTHROUGH, default 1h)")
    var pinnedPassthrough: String?

    @Option(help: "Keep an idle verified upstream connection this long for the agent's next inspected connection to the same destination; 0 never reuses one. (env KAIZEN_UPSTREAM_IDLE_TIMEOUT, default 4s)")
    var upstreamIdleTimeout: String?

    @Option(help: "Also listen here for connections redirected by iptables (transparent mode). (env KAIZEN_TRANSPARENT_PORT)")
    var transparentPort: String?

    @Option(help: "observe: report what the control plane's policy would block; enforce: refuse it. (env KAIZEN_MODE, default observe)")
    var mode: String?

    @Option(help: "While no policy was ever loaded: open allows, closed blocks. (env KAIZEN_POLICY_FAIL, default open)")
    var policyFail: String?

    @Option(help: "Fetch the policy again this often (If-None-Match). (env KAIZEN_POLICY_REFRESH, default 60s)")
    var policyRefresh: String?

    @Option(help: "Event loops (one thread each) for all connections. (env KAIZEN_EVENT_LOOPS, default one per CPU the process may use)")
    var eventLoops: String?

    @Option(help: "Check the heap this often and give the memory a load freed back to the system; 0 never does. (env KAIZEN_MEMORY_TRIM_INTERVAL, default 10s)")
    var memoryTrimInterval: String?

    @Option(help: "Admin listener for /metrics, /healthz and /readyz: address:port, or off. (env KAIZEN_ADMIN_LISTEN, default 127.0.0.1:9090)")
    var adminListen: String?

    @Option(help: "Log format on standard error: text or json (one object per line). (env KAIZEN_LOG_FORMAT, default text)")
    var logFormat: String?

    func runProxy() async throws {
        var environment = ProcessInfo.processInfo.environment
        // A flag given on the command line wins over its environment variable.
        let flags: [(ConfigurationKey, String?)] = [
            (.port, port), (.listen, listen), (.agent, agent), (.apiURL, apiURL), (.auditLog, auditLog),
            (.apiCAFile, apiCAFile), (.spoolDirectory, spoolDir), (.spoolMaxBytes, spoolMaxBytes), (.deliveryTimeout, deliveryTimeout),
            (.connectTimeout, connectTimeout), (.idleTimeout, idleTimeout), (.dnsCacheTTL, dnsCacheTTL),
            (.drainSeconds, drainSeconds), (.logLevel, logLevel), (.caCertificate, caCert), (.caKey, caKey),
            (.inspectHosts, inspectHosts), (.passthroughHosts, passthroughHosts), (.upstreamCAFile, upstreamCAFile),
            (.pinnedPassthrough, pinnedPassthrough), (.upstreamIdleTimeout, upstreamIdleTimeout), (.transparentPort, transparentPort),
            (.auditMaxBytes, auditMaxBytes), (.auditFsync, auditFsync), (.stateDirectory, stateDir),
            (.baselineLearn, baselineLearn), (.baselineMax, baselineMax), (.allowClients, allowClients),
            (.proxyAuth, proxyAuth), (.allowPrivate, allowPrivate), (.denyDestinations, denyDestinations), (.connectPorts, connectPorts),
            (.maxRequestLine, maxRequestLine), (.maxHeaderBytes, maxHeaderBytes), (.maxHeaderFields, maxHeaderFields),
            (.headerTimeout, headerTimeout), (.inspectHTTP2, inspectHttp2), (.http2MaxStreams, h2MaxStreams), (.http2BufferBytes, h2BufferBytes),
            (.maxConnections, maxConnections), (.memoryTrimInterval, memoryTrimInterval),
            (.maxConnectionsPerClient, maxConnectionsPerClient), (.eventLoops, eventLoops), (.mode, mode), (.policyFail, policyFail),
            (.policyRefresh, policyRefresh), (.adminListen, adminListen), (.logFormat, logFormat),
        ]
        for case (let key, let value?) in flags {
            environment[key.variable] = value
        }
        if local { environment[ConfigurationKey.local.variable] = "1" }
        if reportQuery { environment[ConfigurationKey.reportQuery.variable] = "1" }
        if inspectRequired { environment[ConfigurationKey.inspectRequired.variable] = "1" }
        if let apiKeyFile {
            guard let key = try? String(contentsOfFile: apiKeyFile, encoding: .utf8) else {
                fail("--api-key-file names no readable file (its value is not shown, as it may be the API key itself): give the path of a readable file that holds the API key")
            }
            environment[ConfigurationKey.apiKey.variable] = key
        }

        let configuration: ProxyConfiguration
        do {
            configuration = try ProxyConfiguration(environment: environment)
        } catch {
            fail(error.description)
        }

        // Before anything uses SwiftNIO's shared event loops (which start all their threads at first use).
        if let loops = configuration.eventLoops { NIOSingletons.groupLoopCountSuggestion = loops }

        let level = configuration.logLevel
        switch configuration.logFormat {
        case .json:
            LoggingSystem.bootstrap { label in JSONLogHandler(label: label, level: level) }
        case .text:
            LoggingSystem.bootstrap { label in TextLogHandler(label: label, level: level) }
        }
        let logger = Logger(label: "kaizen-egress")
        signal(SIGPIPE, SIG_IGN)  // a closed stdout must not kill the proxy; writes report EPIPE instead

        let application: EgressApplication
        do {
            application = try EgressApplication(configuration: configuration, logger: logger)
        } catch let error as ConfigurationError {
            fail(error.description)
        }
        // The first policy fetch comes before the listener, so the first connections meet the policy, not
        // KAIZEN_POLICY_FAIL (bounded: a control plane that does not answer delays the start by seconds only).
        await application.policyStore?.loadInitial()
        if let admin = application.adminServer, let listen = configuration.adminListen {
            do {
                try await admin.bind()
            } catch {
                fail(
                    "\(ConfigurationKey.adminListen.variable): cannot listen on \(listen.host) port \(listen.port): \(Self.reason(error)): set \(ConfigurationKey.adminListen.spelled) to a free address:port, or off"
                )
            }
        }
        do {
            try await application.server.bind()
        } catch let error as TransparentBindError {
            fail(
                "\(ConfigurationKey.transparentPort.variable): cannot listen on \(configuration.listenAddress) port \(error.port): \(Self.reason(error.underlying)): set \(ConfigurationKey.transparentPort.spelled) to a free port"
            )
        } catch {
            fail(
                "\(ConfigurationKey.port.variable): cannot listen on \(configuration.listenAddress) port \(configuration.port): \(Self.reason(error)): set \(ConfigurationKey.port.spelled) to a free port, or stop what uses it"
            )
        }
        defer { LogOutput.standardError.flush() }
        try await application.serviceGroup(logger: logger).run()
    }

    /// Why a bind failed, as the system says it (`address already in use`).
    private static func reason(_ error: any Error) -> String {
        (error as? IOError).map { String(cString: strerror($0.errnoCode)).lowercased() } ?? "\(error)"
    }
}

/// For every command: prints one line naming the problem and its fix, and exits with status 2.
func fail(_ line: String) -> Never {
    LogOutput.standardError.flush()
    FileHandle.standardError.write(Data("kaizen-egress: \(line)\n".utf8))
    Foundation.exit(2)
}

import AccessControl
import Audit
import ControlPlane
import Foundation
import Interception
import OpenSSLTLS
import Logging
import Policy
public import Telemetry
import NIOCore
import ServiceLifecycle
import UnixSignals

/// Builds the proxy's services from a configuration: the `@main` entry point and the tests share this.
public struct EgressApplication: Sendable {
    /// Present in local mode: every record on standard output.
    public let actionLog: LocalActionLog?
    /// Present when `KAIZEN_AUDIT_LOG` is set: the hash-chained copy.
    public let auditLog: AuditLog?
    /// Present when an API key is configured.
    public let reporter: Reporter?
    /// Present when an API key is configured: the control plane's policies for each agent.
    public let policyStore: PolicyStore?
    /// Present unless `KAIZEN_BASELINE_MAX` is 0: which destinations each agent reached before.
    public let baselineStore: BaselineStore?
    public let server: ProxyServer
    /// Present unless `KAIZEN_ADMIN_LISTEN=off`: `/metrics`, `/healthz`, `/readyz`.
    public let adminServer: AdminServer?
    /// The proxy's metrics and their Prometheus exposition (a registry of this application's own).
    public let metrics: ProxyMetrics
    public let prometheus: PrometheusExport

    /// - Throws: `ConfigurationError` when the audit log, the state directory or the CA cannot be used.
    public init(
        configuration: ProxyConfiguration,
        logger: Logger,
        extraSink: (any ActionSink)? = nil,
        onListening: (@Sendable (SocketAddress) -> Void)? = nil
    ) throws {
        let prometheus = PrometheusExport()
        let metrics = ProxyMetrics(factory: prometheus.factory)
        self.prometheus = prometheus
        self.metrics = metrics
        actionLog = configuration.local ? LocalActionLog(logger: logger) : nil
        auditLog = try configuration.auditLogPath.map { try Self.makeAuditLog(configuration, path: $0, logger: logger) }
        // Before the control plane's TLS context: that leaves the inspection CA out of its trust too.
        let inspection = try Inspection.make(configuration, logger: logger, metrics: metrics)
        if let apiKey = configuration.apiKey {
            let (endpoint, tls) = try Self.controlPlane(
                configuration, distrusting: inspection?.authority.certificate, logger: logger)
            reporter = try Self.makeReporter(
                configuration, endpoint: endpoint, tls: tls, apiKey: apiKey, metrics: metrics, logger: logger)
            policyStore = PolicyStore(
                configuration: .init(
                    endpoint: endpoint,
                    apiKey: apiKey.value,
                    tls: tls,
                    agents: Self.policyAgents(configuration),
                    refreshInterval: .nanoseconds(configuration.policyRefresh.nanoseconds),
                    cacheDirectory: Self.policyCacheDirectory(configuration, logger: logger)
                ),
                logger: logger,
                onFetch: { metrics.policyFetch($0.rawValue) }
            )
        } else {
            reporter = nil
            policyStore = nil
        }
        var baseline: DestinationBaseline? = nil
        var baselineStore: BaselineStore? = nil
        if configuration.baselineMaxEntries > 0 {
            let created = DestinationBaseline(
                maxEntries: configuration.baselineMaxEntries,
                learningPeriod: .nanoseconds(configuration.baselineLearningPeriod.nanoseconds)
            )
            baseline = created
            do {
                baselineStore = try BaselineStore(directory: configuration.stateDirectory, baseline: created, logger: logger)
            } catch .directory(let reason) where !configuration.stateDirectoryIsSet {
                // The default directory (under the working directory) is a convenience: without it new
                // destinations are still flagged, from this run's memory.
                logger.warning(
                    "the destination baseline is kept in memory only (\(reason)); set KAIZEN_STATE_DIR to a writable directory to keep it across restarts"
                )
            } catch .directory(let reason) {
                throw ConfigurationError(
                    variable: ConfigurationKey.stateDirectory.variable,
                    "KAIZEN_STATE_DIR: \(reason): set \(ConfigurationKey.stateDirectory.spelled) to a directory the proxy can create and write"
                )
            } catch {
                throw ConfigurationError(
                    variable: ConfigurationKey.stateDirectory.variable,
                    "KAIZEN_STATE_DIR: \(error): move the damaged file away to start a new baseline, or set \(ConfigurationKey.stateDirectory.spelled) to another directory"
                )
            }
        }
        self.baselineStore = baselineStore
        var sinks: [any ActionSink] = []
        if let actionLog { sinks.append(actionLog) }
        if let auditLog { sinks.append(auditLog) }
        if let reporter { sinks.append(reporter) }
        if let extraSink { sinks.append(extraSink) }
        let sink: any ActionSink = sinks.count == 1 ? sinks[0] : FanOutSink(sinks)
        let policy = policyStore.map {
            PolicyCheck(store: $0, enforcing: configuration.policyMode == .enforce, failClosed: configuration.policyFailClosed)
        }
        let server = ProxyServer(
            configuration: configuration, sink: sink, logger: logger, inspection: inspection,
            baseline: baseline, policy: policy, metrics: metrics, onListening: onListening)
        self.server = server
        let (reporter, policyStore) = (self.reporter, self.policyStore)
        adminServer = configuration.adminListen.map { listen in
            Self.makeAdminServer(
                listen, configuration: configuration, server: server, reporter: reporter, policyStore: policyStore,
                prometheus: prometheus, metrics: metrics, logger: logger)
        }
    }

    /// SIGHUP: reads the CA files, the host lists, the client ranges and the credentials file again (the
    /// environment does not change; the files it names may). Everything is checked first: a problem keeps all
    /// the current settings and logs one line saying why. Open connections keep what they started with.
    public func reload(logger: Logger) {
        let configuration: ProxyConfiguration
        let inspection: Inspection?
        let current = server.live.current
        do {
            configuration = try ProxyConfiguration(environment: server.configuration.source.values)
            inspection = try Inspection.make(configuration, logger: logger, metrics: metrics, previous: current.inspection)
        } catch {
            logger.error("SIGHUP: \(error.description); the current settings are kept")
            return
        }
        server.live.replace(
            .init(
                inspection: inspection, allowedClients: configuration.allowedClients,
                credentials: configuration.proxyCredentials))
        policyStore?.setAgents(Self.policyAgents(configuration))
        auditLog?.recordReload(settings: Self.auditSettings(configuration, ca: inspection?.authority.certificate))
        var parts: [String] = []
        if let inspection {
            parts.append("CA \(inspection.authority.certificate.subjectDescription)")
            parts.append("inspect hosts \(configuration.inspectHosts?.description ?? "all")")
            parts.append("passthrough hosts \(configuration.passthroughHosts?.description ?? "none")")
        }
        parts.append("allowed clients \(configuration.allowedClients.map { "\($0.count) ranges" } ?? "any")")
        parts.append("proxy credentials \(configuration.proxyCredentials.map { "\($0.agents.count) agents" } ?? "off")")
        logger.notice("SIGHUP: settings reloaded (\(parts.joined(separator: "; "))); other settings need a restart")
    }

    /// What the start record of the audit log says the proxy captures.
    /// - Parameter ca: the CA certificate in force, once loaded (a reload); without it, the one the CA file holds.
    static func auditSettings(_ configuration: ProxyConfiguration, ca: OpenSSLCertificate? = nil) -> [(String, AuditSetting)] {
        var settings: [(String, AuditSetting)] = [
            ("agent", .text(configuration.agent)),
            ("mode", configuration.inspectionCA == nil ? "destination-only" : "inspection"),
            ("report_query", configuration.reportQuery ? "on" : "off"),
            ("transparent", configuration.transparentPort == nil ? "off" : "on"),
            ("control_plane", configuration.apiKey == nil ? "off" : .text(configuration.apiURL)),
        ]
        if let files = configuration.inspectionCA {
            // Which CA signs the minted leaves: a reload that rotates it shows in the chain, not only in the log.
            // A reload names the CA it loaded, not what the file holds by the time the record is written.
            let certificate = ca ?? Self.firstCertificate(file: files.certificateFile)
            settings.append(("ca_sha256", .text(certificate.map(Self.fingerprint) ?? "unreadable")))
            settings.append(("inspect_hosts", .text(configuration.inspectHosts.map { "\($0)" } ?? "all")))
            settings.append(("passthrough_hosts", .text(configuration.passthroughHosts.map { "\($0)" } ?? "none")))
            // Which protocols are decrypted: HTTP/2 streams are reported like HTTP/1.1 requests.
            settings.append(("inspect_http2", configuration.inspectHTTP2 ? "on" : "off"))
            // Whether anything that should be inspected could still pass through uninspected.
            settings.append(("inspect_required", configuration.inspectRequired ? "on" : "off"))
        }
        settings += accessSettings(configuration)
        return settings
    }

    /// Who could use the proxy and where it could go, for the connections accepted from then on (one accepted before
    /// a reload keeps what it started with): the address it listens on, the allowed clients, the agents the
    /// credentials file names (never a token), the exceptions to the destination guard and the ranges it refuses
    /// besides its own, the ports CONNECT may reach, and whether the control plane's policies only observe or enforce.
    /// Ranges are normalised (`10.1.2.3/16` is `10.1.0.0/16`), agents sorted, private ranges before private names;
    /// "any" is written as the whole range.
    static func accessSettings(_ configuration: ProxyConfiguration) -> [(String, AuditSetting)] {
        let host = configuration.listenAddress.contains(":") ? "[\(configuration.listenAddress)]" : configuration.listenAddress
        var settings: [(String, AuditSetting)] = [
            ("listen", .text("\(host):\(configuration.port)")),
            ("allow_clients", .list(configuration.allowedClients?.map(\.description) ?? ["0.0.0.0/0", "::/0"])),
            ("proxy_auth", configuration.proxyCredentials == nil ? "off" : "on"),
        ]
        if let credentials = configuration.proxyCredentials {
            settings.append(("proxy_auth_agents", .list(credentials.agents)))
        }
        settings.append(
            ("allow_private", .list(configuration.allowPrivateRanges.map(\.description) + configuration.allowPrivateNames)))
        settings.append(("deny_destinations", .list(configuration.denyDestinationRanges.map(\.description))))
        let ports = configuration.connectPorts ?? [1...65535]
        settings.append(
            ("connect_ports", .list(ports.map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" })))
        if configuration.apiKey != nil {
            settings.append(("policy", configuration.policyMode == .enforce ? "enforce" : "observe"))
            settings.append(("policy_fail", configuration.policyFailClosed ? "closed" : "open"))
        } else {
            settings.append(("policy", "off"))
        }
        return settings
    }

    /// The first certificate in `file` (the CA; intermediates follow it); nil when it cannot be read (the CA's own
    /// checks refuse to start then).
    private static func firstCertificate(file: String) -> OpenSSLCertificate? {
        guard let bytes = FileManager.default.contents(atPath: file) else { return nil }
        return try? OpenSSLCertificate.chain(pemOrDER: Array(bytes)).first
    }

    /// The SHA-256 of a certificate's DER in lowercase hex, as `openssl x509 -fingerprint -sha256` prints it
    /// without colons.
    static func fingerprint(_ certificate: OpenSSLCertificate) -> String {
        hexString(certificate.derBytes.withUnsafeBytes { OpenSSLDigest.sha256($0) })
    }

    private static func makeAuditLog(
        _ configuration: ProxyConfiguration,
        path: String,
        logger: Logger
    ) throws(ConfigurationError) -> AuditLog {
        do {
            return try AuditLog(
                configuration: .init(
                    path: path,
                    maxBytes: configuration.auditMaxBytes,
                    fsyncInterval: .nanoseconds(configuration.auditFsyncInterval.nanoseconds),
                    settings: auditSettings(configuration)
                ),
                logger: logger
            )
        } catch .inUse(let file) {
            throw ConfigurationError(
                variable: ConfigurationKey.auditLog.variable,
                "KAIZEN_AUDIT_LOG: \(file) is being written by another kaizen-egress process (it holds \(file).lock): give each proxy its own audit log, or stop the other one"
            )
        } catch .hardLinked(let file, let links) {
            throw ConfigurationError(
                variable: ConfigurationKey.auditLog.variable,
                "KAIZEN_AUDIT_LOG: \(file) has \(links) hard links, and a second name would let another proxy write the same chain: remove the other names (find / -xdev -samefile \(file) lists them) or set \(ConfigurationKey.auditLog.spelled) to a new file"
            )
        } catch .endsBeforeHead(let file, let ends, let head, let headPath) {
            // The evidence of the cut is the log as it is: nothing is cut or written, and the fix keeps it.
            throw ConfigurationError(
                variable: ConfigurationKey.auditLog.variable,
                "KAIZEN_AUDIT_LOG: \(file) ends at \(ends.map { "seq \($0)" } ?? "no line") but its head file \(headPath) records seq \(head): lines were removed from the end of the log, and continuing it would hide that: keep the evidence: move the log, its rotated files and its head file aside (to start a new log), or restore the missing lines"
            )
        } catch .differsFromHead(let file, let sequence, let headPath) {
            throw ConfigurationError(
                variable: ConfigurationKey.auditLog.variable,
                "KAIZEN_AUDIT_LOG: seq \(sequence) in \(file) does not hash to what its head file \(headPath) records: the log or the head file was changed, and continuing it would hide that: keep the evidence: move the log, its rotated files and its head file aside (to start a new log), or restore them"
            )
        } catch .invalidHead(let headPath) {
            throw ConfigurationError(
                variable: ConfigurationKey.auditLog.variable,
                "KAIZEN_AUDIT_LOG: \(headPath) is not a head file the proxy wrote, so the end of \(path) cannot be checked: keep the evidence: move the log, its rotated files and its head file aside (to start a new log), or restore the head file"
            )
        } catch .notChained(let file) {
            throw ConfigurationError(
                variable: ConfigurationKey.auditLog.variable,
                "KAIZEN_AUDIT_LOG: \(file) is not a hash-chained audit log (an older version's, or another file): move it away or set \(ConfigurationKey.auditLog.spelled) to a new file"
            )
        } catch {
            throw ConfigurationError(
                variable: ConfigurationKey.auditLog.variable,
                "KAIZEN_AUDIT_LOG: cannot open \(path): \(error): set \(ConfigurationKey.auditLog.spelled) to a file path in a directory the proxy can write"
            )
        }
    }

    private static func makeAdminServer(
        _ listen: (host: String, port: Int),
        configuration: ProxyConfiguration,
        server: ProxyServer,
        reporter: Reporter?,
        policyStore: PolicyStore?,
        prometheus: PrometheusExport,
        metrics: ProxyMetrics,
        logger: Logger
    ) -> AdminServer {
        let enforcingClosed = configuration.policyMode == .enforce && configuration.policyFailClosed
        let endpoints = AdminServer.Endpoints(
            metrics: {
                // Gauges read from their sources at scrape time.
                metrics.setOpenConnections(server.openConnections)
                if let reporter {
                    let backlog = reporter.backlog
                    metrics.setReporterQueue(backlog.actions)
                    metrics.setSpoolBytes(backlog.spoolBytes)
                }
                return prometheus.exposition()
            },
            readiness: {
                var problems: [String] = []
                if !server.isAccepting { problems.append("the proxy listener is not accepting connections") }
                if reporter?.isWedged == true {
                    problems.append("the reporter has not written its queue to the spool for 30 seconds")
                }
                if enforcingClosed, let policyStore, case let (missing, agents) = policyStore.unloaded, missing > 0 {
                    // A count, not names: the admin port does not tell who the agents are (as the auth metric does not).
                    problems.append(
                        agents == 1
                            ? "no policy loaded yet, and KAIZEN_POLICY_FAIL=closed blocks everything"
                            : "no policy loaded yet for \(missing) of \(agents) agents, and KAIZEN_POLICY_FAIL=closed blocks their connections (the others are served)")
                }
                return problems
            }
        )
        return AdminServer(
            host: listen.host, port: listen.port, endpoints: endpoints, logger: logger,
            onListening: { server.addOwnListener($0) })
    }

    /// The agents whose policies are fetched: the configured one and every user of the credentials file.
    static func policyAgents(_ configuration: ProxyConfiguration) -> [String] {
        var agents = [configuration.agent]
        for agent in configuration.proxyCredentials?.agents ?? [] where !agents.contains(agent) { agents.append(agent) }
        return agents
    }

    /// `KAIZEN_STATE_DIR`, created if needed, for the last good policy; nil (memory only, with a warning) when
    /// the default directory cannot be used. The baseline already refused an explicitly set one that cannot.
    private static func policyCacheDirectory(_ configuration: ProxyConfiguration, logger: Logger) -> String? {
        do {
            try StateDirectory.create(configuration.stateDirectory)
            return configuration.stateDirectory
        } catch {
            logger.warning(
                "the last good policy is kept in memory only (\(error)); set KAIZEN_STATE_DIR to a writable directory so a restart with the control plane down still has it"
            )
            return nil
        }
    }

    /// Where the control plane is and the TLS context that verifies it (nil for http on loopback).
    /// - Parameter inspectionCA: the CA that mints the leaves shown to clients, in inspection mode. It is never
    ///   trusted for the control plane either, whichever trust store holds it: anyone with its key could otherwise
    ///   pose as the control plane (take the API key, serve policies). A warning names `KAIZEN_API_CA_FILE` when it
    ///   holds it (the default store is named by inspection's own warnings).
    private static func controlPlane(
        _ configuration: ProxyConfiguration, distrusting inspectionCA: OpenSSLCertificate?, logger: Logger
    ) throws(ConfigurationError) -> (ControlPlaneEndpoint, OpenSSLContext?) {
        let endpoint: ControlPlaneEndpoint
        do {
            endpoint = try ControlPlaneEndpoint(url: configuration.apiURL)
        } catch {
            throw ConfigurationError(variable: ConfigurationKey.apiURL.variable, "KAIZEN_API_URL: \(error): use an https URL")
        }
        var tls: OpenSSLContext? = nil
        if endpoint.useTLS {
            var settings = OpenSSLContext.Configuration(role: .client)
            settings.additionalTrustFile = configuration.apiCAFile
            // Its connections pass no session key: no session cache (only inspection's upstream context resumes).
            settings.sessionLifetime = 0
            if let inspectionCA {
                settings.distrustedIssuers = [inspectionCA]
                if let warning = Inspection.controlPlaneDistrustWarning(apiCAFile: settings.additionalTrustFile, ca: inspectionCA) {
                    logger.warning("\(warning)")
                }
            }
            do {
                tls = try OpenSSLContext(configuration: settings)
            } catch {
                throw ConfigurationError(
                    variable: ConfigurationKey.apiCAFile.variable,
                    "KAIZEN_API_CA_FILE: \(error): give a PEM bundle of CA certificates"
                )
            }
        }
        return (endpoint, tls)
    }

    private static func makeReporter(
        _ configuration: ProxyConfiguration,
        endpoint: ControlPlaneEndpoint,
        tls: OpenSSLContext?,
        apiKey: ProxyConfiguration.APIKey,
        metrics: ProxyMetrics,
        logger: Logger
    ) throws(ConfigurationError) -> Reporter {
        do {
            var settings = Reporter.Configuration(
                endpoint: endpoint,
                apiKey: apiKey.value,
                agent: configuration.agent,
                tls: tls,
                spoolDirectory: configuration.spoolDirectory,
                spoolMaxBytes: configuration.spoolMaxBytes
            )
            settings.metrics = metrics
            settings.responseTimeout = configuration.deliveryTimeout
            return try Reporter(configuration: settings, logger: logger)
        } catch where error.inUse {
            throw ConfigurationError(
                variable: ConfigurationKey.spoolDirectory.variable,
                "KAIZEN_SPOOL_DIR: \(error): give each proxy its own \(ConfigurationKey.spoolDirectory.spelled), or stop the other one"
            )
        } catch {
            throw ConfigurationError(
                variable: ConfigurationKey.spoolDirectory.variable,
                "KAIZEN_SPOOL_DIR: \(error): set \(ConfigurationKey.spoolDirectory.spelled) to a directory the proxy can create and write"
            )
        }
    }

    /// Every long-running part, in dependency order (they shut down in reverse: the listener drains first,
    /// then the reporter spools what it could not send, the baseline is saved, and the logs write what is queued).
    public func serviceGroup(logger: Logger) -> ServiceGroup {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let actionLog { services.append(.init(service: actionLog)) }
        if let auditLog { services.append(.init(service: auditLog)) }
        if let baselineStore { services.append(.init(service: baselineStore)) }
        if let reporter { services.append(.init(service: reporter)) }
        if let policyStore { services.append(.init(service: policyStore)) }
        services.append(.init(service: server))
        // Last, so it shuts down first: /readyz stops answering before the proxy listener drains.
        if let adminServer { services.append(.init(service: adminServer)) }
        let trimInterval = server.configuration.memoryTrimInterval
        if trimInterval > .zero, HeapTrimService.isSupported {
            services.append(.init(service: HeapTrimService(interval: .nanoseconds(trimInterval.nanoseconds), logger: logger)))
        }
        let application = self
        services.append(.init(service: ReloadService { application.reload(logger: logger) }))
        return ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
    }
}

/// Sends every record to several sinks.
struct FanOutSink: ActionSink {
    let sinks: [any ActionSink]

    init(_ sinks: [any ActionSink]) {
        self.sinks = sinks
    }

    func record(_ record: ActionRecord) {
        for sink in sinks { sink.record(record) }
    }
}

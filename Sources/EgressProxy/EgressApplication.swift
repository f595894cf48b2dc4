import ControlPlane
import OpenSSLTLS
import Logging
import NIOCore
import ServiceLifecycle
import UnixSignals

/// Builds the proxy's services from a configuration: the `@main` entry point and the tests share this.
public struct EgressApplication: Sendable {
    public let actionLog: LocalActionLog
    /// Present when an API key is configured.
    public let reporter: Reporter?
    public let server: ProxyServer

    /// - Throws: `ConfigurationError` when the audit log cannot be opened.
    public init(
        configuration: ProxyConfiguration,
        logger: Logger,
        extraSink: (any ActionSink)? = nil,
        onListening: (@Sendable (SocketAddress) -> Void)? = nil
    ) throws {
        let actionLog: LocalActionLog
        do {
            actionLog = try LocalActionLog(
                destinations: .init(standardOutput: configuration.local, auditLogPath: configuration.auditLogPath),
                logger: logger
            )
        } catch {
            throw ConfigurationError(
                variable: ConfigurationKey.auditLog.variable,
                "KAIZEN_AUDIT_LOG: \(error): set \(ConfigurationKey.auditLog.spelled) to a file path in a directory the proxy can write"
            )
        }
        self.actionLog = actionLog
        if let apiKey = configuration.apiKey {
            reporter = try Self.makeReporter(configuration, apiKey: apiKey, logger: logger)
        } else {
            reporter = nil
        }
        var sinks: [any ActionSink] = [actionLog]
        if let reporter { sinks.append(reporter) }
        if let extraSink { sinks.append(extraSink) }
        let sink: any ActionSink = sinks.count == 1 ? actionLog : FanOutSink(sinks)
        let inspection = try Inspection.make(configuration, logger: logger)
        server = ProxyServer(
            configuration: configuration, sink: sink, logger: logger, inspection: inspection, onListening: onListening)
    }

    private static func makeReporter(
        _ configuration: ProxyConfiguration,
        apiKey: ProxyConfiguration.APIKey,
        logger: Logger
    ) throws(ConfigurationError) -> Reporter {
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
            do {
                tls = try OpenSSLContext(configuration: settings)
            } catch {
                throw ConfigurationError(
                    variable: ConfigurationKey.apiCAFile.variable,
                    "KAIZEN_API_CA_FILE: \(error): give a PEM bundle of CA certificates"
                )
            }
        }
        do {
            return try Reporter(
                configuration: .init(
                    endpoint: endpoint,
                    apiKey: apiKey.value,
                    agent: configuration.agent,
                    tls: tls,
                    spoolDirectory: configuration.spoolDirectory,
                    spoolMaxBytes: configuration.spoolMaxBytes
                ),
                logger: logger
            )
        } catch {
            throw ConfigurationError(
                variable: ConfigurationKey.spoolDirectory.variable,
                "KAIZEN_SPOOL_DIR: \(error): set \(ConfigurationKey.spoolDirectory.spelled) to a directory the proxy can create and write"
            )
        }
    }

    /// Every long-running part, in dependency order (they shut down in reverse: the listener drains first,
    /// then the reporter spools what it could not send, then the action log writes what is queued).
    public func serviceGroup(logger: Logger) -> ServiceGroup {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: actionLog)]
        if let reporter { services.append(.init(service: reporter)) }
        services.append(.init(service: server))
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

import ControlPlane
import Logging
import NIOCore
import ServiceLifecycle
import UnixSignals

/// Builds the proxy's services from a configuration: the `@main` entry point and the tests share this.
public struct EgressApplication: Sendable {
    public let actionLog: LocalActionLog
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
        let sink: any ActionSink = extraSink.map { FanOutSink([actionLog, $0]) } ?? actionLog
        server = ProxyServer(configuration: configuration, sink: sink, logger: logger, onListening: onListening)
    }

    /// Every long-running part, in dependency order (they shut down in reverse: the listener drains first,
    /// then the action log writes what is queued).
    public func serviceGroup(logger: Logger) -> ServiceGroup {
        ServiceGroup(
            configuration: .init(
                services: [.init(service: actionLog), .init(service: server)],
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

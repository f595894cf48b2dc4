import ControlPlane
import EgressProxy
import Logging
import NIOCore
import TestSupport

/// A proxy running in this test process on 127.0.0.1 port 0, reporting into a `RecordingSink`.
final class ProxyHarness: Sendable {
    let port: Int
    private let task: Task<Void, any Error>

    private init(port: Int, task: Task<Void, any Error>) {
        self.port = port
        self.task = task
    }

    static func start(
        _ configure: (inout ProxyConfiguration) -> Void = { _ in }
    ) async throws -> (ProxyHarness, RecordingSink) {
        var configuration = try ProxyConfiguration(environment: [
            "KAIZEN_LOCAL": "1", "PORT": "0", "KAIZEN_ALLOW_PRIVATE": ProxyEnvironment.loopbackOrigins,
        ])
        configuration.drainTimeout = .seconds(1)
        configure(&configuration)
        let sink = RecordingSink()
        let server = ProxyServer(
            configuration: configuration,
            sink: sink,
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        )
        guard let address = try await server.bind(), let port = address.port else {
            throw TestFailure("proxy did not bind")
        }
        let task = Task { try await server.run() }
        return (ProxyHarness(port: port, task: task), sink)
    }

    var url: String { "http://127.0.0.1:\(port)" }

    func stop() async {
        task.cancel()
        _ = try? await task.value
    }
}

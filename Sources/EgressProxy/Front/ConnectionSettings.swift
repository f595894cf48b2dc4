import NIOCore

/// The per-connection settings every handler reads, taken once from the configuration.
struct ConnectionSettings: Sendable {
    var connectTimeout: TimeAmount
    var idleTimeout: TimeAmount
    var clientHelloTimeout: TimeAmount
    var clientHelloLimit: Int

    init(_ configuration: ProxyConfiguration) {
        self.connectTimeout = configuration.connectTimeout
        self.idleTimeout = configuration.idleTimeout
        self.clientHelloTimeout = configuration.clientHelloTimeout
        self.clientHelloLimit = configuration.clientHelloLimit
    }
}

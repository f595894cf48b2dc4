import Foundation

/// The environment a test gives the proxy binary: this process's, without any KAIZEN_ or proxy variable the
/// developer may have set, plus the exception for loopback origins (the destination guard refuses loopback by
/// default, and every test origin listens there), and an admin listener on a free port.
enum ProxyEnvironment {
    static let loopbackOrigins = "127.0.0.0/8,::1"

    static func make(_ extra: [String: String] = [:]) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment
        for key in environment.keys
        where key.hasPrefix("KAIZEN_") || key == "PORT" || key.hasSuffix("_proxy") || key.hasSuffix("_PROXY") {
            environment[key] = nil
        }
        environment["KAIZEN_ALLOW_PRIVATE"] = loopbackOrigins
        // Tests run side by side: each proxy's admin listener on a free port, not all on 9090.
        environment["KAIZEN_ADMIN_LISTEN"] = "127.0.0.1:0"
        // An empty value in `extra` means "not set" (the proxy refuses a variable set to an empty value).
        return environment.merging(extra) { $1 }.filter { !$0.value.isEmpty }
    }
}

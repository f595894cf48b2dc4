import ArgumentParser
import Foundation

/// `kaizen-egress probe`: exits 0 when the proxy accepts TCP connections on its port, 1 otherwise. For the
/// container's HEALTHCHECK, where no curl or shell is available.
struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Exit 0 if the proxy accepts connections on its port (for container health checks)."
    )

    // Positional: the root command's own --port would take the option.
    @Argument(help: "Port to check. (env PORT, default 8080)")
    var port: Int?

    @Argument(help: "Address to check; a wildcard listen address is checked on loopback. (env KAIZEN_LISTEN)")
    var address: String?

    func run() throws {
        let environment = ProcessInfo.processInfo.environment
        let port = self.port ?? environment["PORT"].flatMap(Int.init) ?? 8080
        var host = address ?? environment["KAIZEN_LISTEN"] ?? "127.0.0.1"
        if host == "0.0.0.0" { host = "127.0.0.1" }
        if host == "::" || host == "[::]" { host = "::1" }
        host = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        throw ExitCode(Self.accepts(host: host, port: port) ? 0 : 1)
    }

    static func accepts(host: String, port: Int) -> Bool {
        var hints = addrinfo()
        hints.ai_flags = AI_NUMERICHOST
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &result) == 0, let info = result else { return false }
        defer { freeaddrinfo(result) }
        let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0
    }
}

import Foundation
import TestSupport
import Testing

/// slowhttptest (slow headers, then slow bodies, 2,000 connections) against the proxy while another client keeps
/// making normal requests: those keep succeeding, and the proxy's descriptors and memory come back afterwards.
@Suite(.serialized) struct SlowClientTests {
    static let available = FileManager.default.isExecutableFile(atPath: Paths.which("slowhttptest")) || getuid() == 0

    struct Proxy {
        let child: ChildProcess
        let port: Int
        let pid: Int32

        var openFiles: Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1 }
        var residentKiB: Int {
            let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
        }
    }

    func start() throws -> Proxy {
        let child = try ChildProcess(
            Paths.proxyBinary, ["--port", "0"],
            environment: ProxyEnvironment.make(["KAIZEN_LOCAL": "1", "KAIZEN_HEADER_TIMEOUT": "4s"]))
        let port = try child.listeningPort()
        return Proxy(child: child, port: port, pid: child.pid)
    }

    /// One normal request from another loopback address (its own per-client budget), through the proxy: nil when
    /// answered, else what curl said. (20 s: the whole suite runs beside this test on a machine of two cores; what is
    /// checked is that the request is served, not how fast.)
    func normalRequest(_ proxy: Proxy, originPort: Int) throws -> String? {
        let result = try runCommand(Paths.which("curl"), [
            "-sS", "--max-time", "20", "--interface", "127.0.0.2", "-x", "127.0.0.1:\(proxy.port)",
            "-w", "%{stderr}%{http_code} after %{time_total} s", "http://127.0.0.1:\(originPort)/hello",
        ], timeout: 40)
        return result.stdout == "hello from origin" ? nil : "curl \(result.status): \(result.stdout) \(result.stderr)"
    }

    @Test(.enabled(if: available, "needs slowhttptest (make test installs it when run as root)"), arguments: [
        ["-H"],  // slowloris: headers trickle in
        ["-B", "-s", "8192"],  // R-U-Dead-Yet: a body trickles in
    ])
    func normalRequestsSurviveSlowClients(_ mode: [String]) throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        let proxy = try start()
        #expect(try normalRequest(proxy, originPort: originPort) == nil)
        let baselineFiles = proxy.openFiles
        let baselineMemory = proxy.residentKiB

        let attack = try ChildProcess(Paths.which("slowhttptest"), mode + [
            "-c", "2000", "-r", "500", "-i", "2", "-l", "12", "-p", "3",
            "-d", "127.0.0.1:\(proxy.port)", "-u", "http://127.0.0.1:\(originPort)/upload",
        ])
        // Once slowhttptest reports connections held open, normal requests must still go through.
        _ = try attack.waitForLine(timeout: 30) { $0.contains("connected:") && !$0.hasSuffix(" 0") }
        var failures: [String] = []
        for _ in 0..<20 { if let failure = try normalRequest(proxy, originPort: originPort) { failures.append(failure) } }
        #expect(failures.isEmpty, "\(20 - failures.count) of 20 normal requests succeeded during the attack: \(failures)")
        #expect(try attack.waitForExit(timeout: 90) == 0)

        // Afterwards the descriptors come back (polled: the proxy closes them as their connections end, which
        // no event here reports), and memory stays near where it was.
        var files = proxy.openFiles
        for _ in 0..<100 where files > baselineFiles {
            Thread.sleep(forTimeInterval: 0.1)
            files = proxy.openFiles
        }
        #expect(files <= baselineFiles, "\(files) open descriptors, \(baselineFiles) before")
        #expect(proxy.residentKiB - baselineMemory < 64 * 1024, "RSS \(baselineMemory) KiB before, \(proxy.residentKiB) KiB after")
        #expect(try normalRequest(proxy, originPort: originPort) == nil)
    }
}

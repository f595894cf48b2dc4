import Foundation
import TestSupport
import Testing

/// The memory a load used is given back once it ends (`KAIZEN_MEMORY_TRIM_INTERVAL`): glibc keeps freed heap
/// pages, and a sidecar's memory limit counts them.
@Suite struct MemoryTests {
    let inspection = InspectionTests()

    /// The process's anonymous resident memory (its heap, mostly), in KiB.
    static func anonymousKiB(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("RssAnon:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }

    @Test func memoryALoadUsedIsGivenBackWhenItEnds() throws {
        // No idle upstream connections kept (they would hold memory for 4 s), and a short interval to wait less.
        let setup = try inspection.setUp(extra: ["KAIZEN_UPSTREAM_IDLE_TIMEOUT": "0", "KAIZEN_MEMORY_TRIM_INTERVAL": "200ms"])
        let pid = setup.proxy.pid
        let before = Self.anonymousKiB(pid)
        let script = Paths.endToEndDirectory.appendingPathComponent("mitm_client.py").path
        let client = try ChildProcess(
            Paths.which("python3"),
            [script, "many", "\(setup.proxyPort)", "\(setup.originPort)", setup.inspectionCA, "300"])
        _ = try client.waitForLine(timeout: 60) { $0 == "OPEN 300" }
        let loaded = Self.anonymousKiB(pid)
        // 300 inspected connections (two TLS sessions and their buffers each) take tens of MB.
        try #require(loaded - before >= 16 * 1024, "the load grew the proxy from \(before) to \(loaded) KiB")
        client.signal(SIGUSR1)
        _ = try client.waitForLine(timeout: 30) { $0 == "CLOSED" }
        _ = try setup.proxy.waitForLines(count: 300, timeout: 30) { $0.contains("\"close\"") }
        // Back to within a third of the load's growth, within 10 s (a trim is due 200 ms after the load ended).
        let target = before + (loaded - before) / 3
        var now = Self.anonymousKiB(pid)
        let deadline = Date().addingTimeInterval(10)
        while now > target && Date() < deadline {
            // /proc has no event for a process's size: poll it, boundedly.
            usleep(100_000)
            now = Self.anonymousKiB(pid)
        }
        #expect(now <= target, "before \(before) KiB, with 300 connections \(loaded), 10 s after they closed \(now)")
        // The proxy serves on after the trim.
        let result = try inspection.curl(setup, ["https://localhost:\(setup.originPort)/hello"])
        #expect(result.stdout == "hello from origin")
    }
}

import Foundation

/// A program the tests run (an origin, curl, the proxy binary), with its output collected as it arrives so
/// a test can wait, with a deadline, for a line it expects. Terminated when released.
final class ChildProcess: @unchecked Sendable {
    private static let spawnLock = NSLock()

    /// What the reader threads fill in. They hold this, not the `ChildProcess`, so releasing the
    /// `ChildProcess` terminates the program (and with it the threads, at EOF).
    private final class Output: @unchecked Sendable {
        // Every field is guarded by `condition`.
        let condition = NSCondition()
        var lines: [String] = []
        var stderrText = ""
        var partial = Data()
        var exited = false
        var finishedReaders = 0

        var done: Bool { exited && finishedReaders == 2 }

        func pump(_ handle: FileHandle, isStdout: Bool) {
            while true {
                let data = handle.availableData
                condition.lock()
                if data.isEmpty {
                    if isStdout && !partial.isEmpty {
                        lines.append(String(decoding: partial, as: UTF8.self))
                        partial.removeAll()
                    }
                    finishedReaders += 1
                    condition.broadcast()
                    condition.unlock()
                    return
                }
                if isStdout {
                    partial.append(data)
                    while let newline = partial.firstIndex(of: 0x0a) {
                        lines.append(String(decoding: partial[partial.startIndex..<newline], as: UTF8.self))
                        partial.removeSubrange(partial.startIndex...newline)
                    }
                } else {
                    stderrText += String(decoding: data, as: UTF8.self)
                }
                condition.broadcast()
                condition.unlock()
            }
        }
    }

    private let process = Process()
    private let output = Output()

    /// The program's process id, to read its /proc entries.
    var pid: Int32 { process.processIdentifier }

    init(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }
        let output = self.output
        process.terminationHandler = { _ in
            output.condition.lock()
            output.exited = true
            output.condition.broadcast()
            output.condition.unlock()
        }
        // Tests start processes in parallel: mark the pipes close-on-exec under one lock, so a process spawned
        // at the same moment by another test does not inherit them (and hold our EOF back for its lifetime).
        ChildProcess.spawnLock.lock()
        defer { ChildProcess.spawnLock.unlock() }
        let stdout = Pipe()
        let stderr = Pipe()
        for handle in [
            stdout.fileHandleForReading, stdout.fileHandleForWriting, stderr.fileHandleForReading,
            stderr.fileHandleForWriting,
        ] {
            _ = fcntl(handle.fileDescriptor, F_SETFD, FD_CLOEXEC)
        }
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let stdoutReader = stdout.fileHandleForReading
        let stderrReader = stderr.fileHandleForReading
        Thread { output.pump(stdoutReader, isStdout: true) }.start()
        Thread { output.pump(stderrReader, isStdout: false) }.start()
    }

    /// `python3 origin.py --mode …`, waiting for its "PORT n" line.
    static func origin(mode: String, host: String = "127.0.0.1", cert: String? = nil, key: String? = nil) throws
        -> (ChildProcess, Int)
    {
        var arguments = [Paths.originScript, "--mode", mode, "--host", host]
        if let cert, let key { arguments += ["--cert", cert, "--key", key] }
        let child = try ChildProcess(Paths.which("python3"), arguments)
        let line = try child.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }
        guard let port = Int(line.dropFirst(5)) else { throw TestFailure("origin printed \(line)") }
        return (child, port)
    }

    /// The first stdout line that satisfies `predicate`, waiting up to `timeout` seconds for it.
    func waitForLine(timeout: TimeInterval, where predicate: (String) -> Bool) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        output.condition.lock()
        defer { output.condition.unlock() }
        while true {
            if let line = output.lines.first(where: predicate) { return line }
            if output.done { throw TestFailure("process exited; stderr: \(output.stderrText)") }
            if !output.condition.wait(until: deadline) {
                throw TestFailure("no matching line within \(timeout)s; stdout: \(output.lines) stderr: \(output.stderrText)")
            }
        }
    }

    /// The stdout lines that satisfy `predicate`, once there are at least `count` of them.
    func waitForLines(count: Int, timeout: TimeInterval, where predicate: (String) -> Bool) throws -> [String] {
        let deadline = Date().addingTimeInterval(timeout)
        output.condition.lock()
        defer { output.condition.unlock() }
        while true {
            let matching = output.lines.filter(predicate)
            if matching.count >= count { return matching }
            if output.done { throw TestFailure("process exited with \(matching.count) of \(count) lines") }
            if !output.condition.wait(until: deadline) {
                throw TestFailure("only \(matching.count) of \(count) lines within \(timeout)s")
            }
        }
    }

    /// Waits until `condition` holds for the stdout lines so far.
    func waitUntil(timeout: TimeInterval, _ condition: ([String]) -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        output.condition.lock()
        defer { output.condition.unlock() }
        while !condition(output.lines) {
            if output.done { throw TestFailure("process exited before the condition held") }
            if !output.condition.wait(until: deadline) { throw TestFailure("condition not met within \(timeout)s") }
        }
    }

    /// Whether stderr contains `text`, waiting up to `timeout` for it: the proxy writes its log in batches (within
    /// 20 ms), so a line can trail the action it accompanies.
    func stderrEventually(_ text: String, timeout: TimeInterval = 5) -> Bool {
        (try? waitForStderr(containing: text, timeout: timeout)) != nil
    }

    /// Waits until stderr contains `text` (`count` times).
    @discardableResult
    func waitForStderr(containing text: String, count: Int = 1, timeout: TimeInterval) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        output.condition.lock()
        defer { output.condition.unlock() }
        while output.stderrText.components(separatedBy: text).count - 1 < count {
            if output.done { throw TestFailure("process exited; stderr: \(output.stderrText)") }
            if !output.condition.wait(until: deadline) { throw TestFailure("stderr lacks \(text): \(output.stderrText)") }
        }
        return output.stderrText
    }

    /// Waits for the process to exit and its output to be read; returns the exit status.
    @discardableResult
    func waitForExit(timeout: TimeInterval) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        output.condition.lock()
        defer { output.condition.unlock() }
        while !output.done {
            if !output.condition.wait(until: deadline) {
                kill(process.processIdentifier, SIGKILL)
                throw TestFailure("did not exit within \(timeout)s")
            }
        }
        return process.terminationStatus
    }

    var stdoutLines: [String] {
        output.condition.lock()
        defer { output.condition.unlock() }
        return output.lines
    }

    var stderr: String {
        output.condition.lock()
        defer { output.condition.unlock() }
        return output.stderrText
    }

    /// The proxy's port once it logs `proxy listening on 127.0.0.1:PORT` (waiting up to 30 s for the line).
    func listeningPort() throws -> Int {
        try loggedPort(after: "proxy listening on 127.0.0.1:")
    }

    /// The admin listener's port, from `admin listener on 127.0.0.1:PORT`.
    func adminPort() throws -> Int {
        try loggedPort(after: "admin listener on 127.0.0.1:")
    }

    private func loggedPort(after marker: String) throws -> Int {
        let stderr = try waitForStderr(containing: marker, timeout: 30)
        guard let port = Int(stderr.components(separatedBy: marker)[1].prefix(while: \.isNumber)) else {
            throw TestFailure("no port after \(marker) in \(stderr)")
        }
        return port
    }

    func signal(_ signal: Int32) {
        kill(process.processIdentifier, signal)
    }

    /// SIGKILL, not `terminate()`: a process started from a Swift concurrency thread inherits that thread's
    /// signal mask, in which SIGTERM is blocked.
    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// Runs a program to completion (bounded by its own timeout flags and `timeout`).
struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

func runCommand(_ executable: String, _ arguments: [String], timeout: TimeInterval = 60) throws -> CommandResult {
    let child = try ChildProcess(executable, arguments)
    let status = try child.waitForExit(timeout: timeout)
    return CommandResult(status: status, stdout: child.stdoutLines.joined(separator: "\n"), stderr: child.stderr)
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

enum Paths {
    /// Tests/EndToEndTests
    static let endToEndDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent()
    /// Tests
    static let testsDirectory = endToEndDirectory.deletingLastPathComponent()
    static let originScript = endToEndDirectory.appendingPathComponent("origin.py").path
    static let packageRoot = testsDirectory.deletingLastPathComponent()

    /// The `kaizen-egress` binary built beside the test bundle.
    static var proxyBinary: String {
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
            Bundle.main.bundleURL,
            Bundle.main.bundleURL.deletingLastPathComponent(),
            packageRoot.appendingPathComponent(".build/debug"),
        ]
        for directory in candidates {
            let path = directory.appendingPathComponent("kaizen-egress").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return packageRoot.appendingPathComponent(".build/debug/kaizen-egress").path
    }

    static func which(_ name: String) -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return "/usr/bin/\(name)"
    }
}

import Foundation

/// A program the tests run (an origin, curl, openssl, the proxy binary), with its output collected as it arrives so
/// a test can wait, with a deadline, for a line it expects. Terminated when released.
public final class ChildProcess: @unchecked Sendable {
    /// What the reader threads fill in. They hold this, not the `ChildProcess`, so releasing the
    /// `ChildProcess` terminates the program (and with it the threads, at EOF).
    private final class Output: @unchecked Sendable {
        // Every field is guarded by `condition`.
        let condition = NSCondition()
        var lines: [String] = []
        var stderrText = ""
        var partial = Data()
        /// The exit code, or the number of the signal that ended the program; set once it has been reaped (its
        /// process id may belong to another program from then on).
        var status: Int32?
        var finishedReaders = 0

        var done: Bool { status != nil && finishedReaders == 2 }

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

    private let output = Output()

    /// The program's process id, to read its /proc entries.
    public let pid: pid_t

    /// Started with `posix_spawn`, not Foundation's `Process`: on this toolchain (swift-corelibs-foundation of
    /// Swift 6.3.1) `Process.run()` intermittently crashes the whole test run, reading past a buffer while it
    /// lists /proc/self/fd (swiftlang/swift-corelibs-foundation#5472). The program starts with no blocked
    /// signals, stdin from /dev/null, and no descriptor but its three standard ones.
    public init(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil, directory: String? = nil
    )
        throws
    {
        var stdoutPipe: [Int32] = [0, 0]
        var stderrPipe: [Int32] = [0, 0]
        guard GNU.pipe2(&stdoutPipe, O_CLOEXEC) == 0 else { throw TestFailure("pipe2: \(String(cString: strerror(errno)))") }
        guard GNU.pipe2(&stderrPipe, O_CLOEXEC) == 0 else {
            close(stdoutPipe[0])
            close(stdoutPipe[1])
            throw TestFailure("pipe2: \(String(cString: strerror(errno)))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, stdoutPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, stderrPipe[1], 2)
        _ = GNU.addClosefrom(&actions, 3)
        if let directory { _ = GNU.addChdir(&actions, directory) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        let environmentList = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer { for entry in environmentList ?? [] { free(entry) } }
        var child: pid_t = 0
        let result = environmentList.map { list in
            posix_spawn(&child, executable, &actions, &attributes, argv, list)
        } ?? posix_spawn(&child, executable, &actions, &attributes, argv, environ)
        close(stdoutPipe[1])
        close(stderrPipe[1])
        guard result == 0 else {
            close(stdoutPipe[0])
            close(stderrPipe[0])
            throw TestFailure("posix_spawn \(executable): \(String(cString: strerror(result)))")
        }
        pid = child
        let output = self.output
        let spawned = child
        Thread {
            // Wait without reaping, then reap under the lock: a signal sent under it (`kill`) can only reach this
            // program, never another that got its process id after the reaping.
            var info = siginfo_t()
            while waitid(P_PID, id_t(spawned), &info, WEXITED | WNOWAIT) == -1 && errno == EINTR {}
            var status: Int32 = 0
            output.condition.lock()
            while waitpid(spawned, &status, 0) == -1 && errno == EINTR {}
            // As Foundation's Process reports it: the exit code, or the number of the signal that ended it.
            output.status = (status & 0x7f) == 0 ? (status >> 8) & 0xff : status & 0x7f
            output.condition.broadcast()
            output.condition.unlock()
        }.start()
        let stdoutReader = FileHandle(fileDescriptor: stdoutPipe[0], closeOnDealloc: true)
        let stderrReader = FileHandle(fileDescriptor: stderrPipe[0], closeOnDealloc: true)
        Thread { output.pump(stdoutReader, isStdout: true) }.start()
        Thread { output.pump(stderrReader, isStdout: false) }.start()
    }

    /// The first stdout line that satisfies `predicate`, waiting up to `timeout` seconds for it.
    public func waitForLine(timeout: TimeInterval, where predicate: (String) -> Bool) throws -> String {
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
    public func waitForLines(count: Int, timeout: TimeInterval, where predicate: (String) -> Bool) throws -> [String] {
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
    public func waitUntil(timeout: TimeInterval, _ condition: ([String]) -> Bool) throws {
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
    public func stderrEventually(_ text: String, timeout: TimeInterval = 5) -> Bool {
        (try? waitForStderr(containing: text, timeout: timeout)) != nil
    }

    /// Waits until stderr contains `text` (`count` times).
    @discardableResult
    public func waitForStderr(containing text: String, count: Int = 1, timeout: TimeInterval) throws -> String {
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
    public func waitForExit(timeout: TimeInterval) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        output.condition.lock()
        defer { output.condition.unlock() }
        while !output.done {
            if !output.condition.wait(until: deadline) {
                if output.status == nil { kill(pid, SIGKILL) }  // not reaped: the id is still this program's
                throw TestFailure("did not exit within \(timeout)s")
            }
        }
        return output.status ?? -1
    }

    public var stdoutLines: [String] {
        output.condition.lock()
        defer { output.condition.unlock() }
        return output.lines
    }

    public var stderr: String {
        output.condition.lock()
        defer { output.condition.unlock() }
        return output.stderrText
    }

    /// Sends `signal` unless the program has been reaped (its id may belong to another program by then).
    public func signal(_ signal: Int32) {
        output.condition.lock()
        defer { output.condition.unlock() }
        if output.status == nil { kill(pid, signal) }
    }

    /// Killed (SIGKILL) when released, and reaped.
    deinit {
        output.condition.lock()
        if output.status == nil { kill(pid, SIGKILL) }
        while output.status == nil { output.condition.wait() }
        output.condition.unlock()
    }
}

/// glibc's GNU extensions the `Glibc` module does not import, looked up once.
private enum GNU {
    static func symbol<Function>(_ name: String, as type: Function.Type) -> Function {
        guard let address = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { fatalError("glibc lacks \(name)") }
        return unsafeBitCast(address, to: type)
    }

    static let pipe2 = symbol("pipe2", as: (@convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32).self)
    static let addClosefrom = symbol(
        "posix_spawn_file_actions_addclosefrom_np",
        as: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    static let addChdir = symbol(
        "posix_spawn_file_actions_addchdir_np",
        as: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32).self)
}

/// Runs a program to completion (bounded by its own timeout flags and `timeout`).
public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

/// `directory`: where it runs (default: the tests' own).
public func runCommand(
    _ executable: String, _ arguments: [String], directory: String? = nil, timeout: TimeInterval = 60
) throws -> CommandResult {
    let child = try ChildProcess(executable, arguments, directory: directory)
    let status = try child.waitForExit(timeout: timeout)
    return CommandResult(status: status, stdout: child.stdoutLines.joined(separator: "\n"), stderr: child.stderr)
}

public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

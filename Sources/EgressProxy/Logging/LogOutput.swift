import ControlPlane
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Standard error for the log handlers, written in batches under load: a line after a quiet moment (20 ms) is
/// written at once; lines that follow it within 20 ms are appended to a buffer that a writer thread sends in one
/// `write` (at once for warnings and worse), so a busy proxy does not pay one system call per log line.
/// Lines never interleave. `flush()` empties the buffer (at exit); a crash can lose the last 20 ms of lines.
public final class LogOutput: @unchecked Sendable {
    public static let standardError = LogOutput(fd: 2)

    private let fd: Int32
    // Guarded by `condition`.
    private let condition = NSCondition()
    private var buffer: [UInt8] = []
    private var urgent = false
    private var started = false
    /// When a write last went out (monotonic nanoseconds).
    private var lastWrite: UInt64 = 0
    private static let coalesce: TimeInterval = 0.02
    private static let coalesceNanos: UInt64 = 20_000_000
    private static let highWater = 256 * 1024

    init(fd: Int32) {
        self.fd = fd
        buffer.reserveCapacity(64 * 1024)
    }

    /// Appends one line (its bytes and a newline).
    func write(_ line: [UInt8], urgent: Bool) {
        condition.lock()
        if !started {
            started = true
            let thread = Thread { [self] in self.writerLoop() }
            thread.name = "kaizen-egress log writer"
            thread.start()
        }
        let wasEmpty = buffer.isEmpty
        let now = DispatchTime.now().uptimeNanoseconds
        if wasEmpty && now &- lastWrite > Self.coalesceNanos {
            // A line after a quiet moment goes out at once: batching is for bursts, not for sparse logs.
            lastWrite = now
            var single = line
            single.append(UInt8(ascii: "\n"))
            send(single)
            condition.unlock()
            return
        }
        buffer.append(contentsOf: line)
        buffer.append(UInt8(ascii: "\n"))
        let wake = wasEmpty || urgent || buffer.count >= Self.highWater
        if urgent || buffer.count >= Self.highWater { self.urgent = true }
        // The writer is woken for the first line of a batch and for urgent ones only, not once per line.
        if wake { condition.signal() }
        condition.unlock()
    }

    /// Writes everything buffered now.
    public func flush() {
        condition.lock()
        let pending = buffer
        buffer.removeAll(keepingCapacity: true)
        condition.unlock()
        send(pending)
    }

    private func writerLoop() {
        while true {
            condition.lock()
            while buffer.isEmpty { condition.wait() }
            // Let a moment's lines gather, unless one is urgent.
            let deadline = Date().addingTimeInterval(Self.coalesce)
            while !urgent, condition.wait(until: deadline) {}
            urgent = false
            let pending = buffer
            buffer.removeAll(keepingCapacity: true)
            lastWrite = DispatchTime.now().uptimeNanoseconds
            condition.unlock()
            send(pending)
        }
    }

    private func send(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        bytes.withUnsafeBytes { _ = FileIO.writeFully(fd, $0) }
    }
}

import CHeapTrim
import Glibc
import Logging
import ServiceLifecycle

/// Reads the heap every `interval` and, when `HeapTrimPolicy` says so, gives its freed pages back to the system
/// (`KAIZEN_MEMORY_TRIM_INTERVAL`). Runs off the event loops: a trim takes the allocator's locks for a few
/// milliseconds at most, and only after a load has ended.
struct HeapTrimService: Service {
    let interval: Duration
    let logger: Logger

    /// Whether this system's C library can do it (glibc 2.33 or later).
    static var isSupported: Bool { kz_heap_trim_supported() != 0 }

    func run() async throws {
        var policy = HeapTrimPolicy()
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            } catch {
                return
            }
            guard let sample = Self.sample() else { continue }
            guard policy.next(sample) == .trim else { continue }
            let took = ContinuousClock().measure { Self.trim() }
            let after = Self.sample() ?? sample
            policy.trimmed(after)
            logger.debug(
                "gave freed heap memory back to the system",
                metadata: [
                    "resident_mb_before": "\(sample.residentBytes >> 20)", "resident_mb_after": "\(after.residentBytes >> 20)",
                    "heap_in_use_mb": "\(after.inUseBytes >> 20)", "heap_free_mb": "\(after.freeBytes >> 20)",
                    "took_ms": "\(took.components.attoseconds / 1_000_000_000_000_000 + took.components.seconds * 1000)",
                ])
        }
    }

    /// Gives every free chunk's pages back (`malloc_trim(0)`).
    static func trim() {
        kz_heap_trim()
    }

    static func sample() -> HeapTrimPolicy.Sample? {
        guard let resident = residentBytes() else { return nil }
        var free = 0
        var inUse = 0
        kz_heap_usage(&free, &inUse)
        return .init(freeBytes: free, inUseBytes: inUse, residentBytes: resident)
    }

    /// The process's resident size from /proc/self/statm (its second field, in pages); nil where it cannot be read.
    static func residentBytes() -> Int? {
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        let fields = buffer[..<count].split(separator: UInt8(ascii: " "))
        guard fields.count >= 2, let pages = Int(String(decoding: fields[1], as: UTF8.self)) else { return nil }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}

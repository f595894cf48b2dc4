import Foundation
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

enum Fixtures {
    static func clientHello(_ name: String) throws -> [UInt8] {
        let url = Paths.testsDirectory.appendingPathComponent("ClientHelloTests/Fixtures/\(name).bin")
        return [UInt8](try Data(contentsOf: url))
    }
}

/// A file of random bytes and its SHA-256 (from `sha256sum`, so the check does not share code with the test).
enum RandomFile {
    static func make(bytes count: Int) throws -> (path: String, sha256: String) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kaizen-body-\(UUID().uuidString)").path
        var generator = SystemRandomNumberGenerator()
        var data = [UInt8](repeating: 0, count: count)
        for index in stride(from: 0, to: count, by: 8) {
            let value = generator.next() as UInt64
            for offset in 0..<min(8, count - index) { data[index + offset] = UInt8(truncatingIfNeeded: value >> (offset * 8)) }
        }
        try Data(data).write(to: URL(fileURLWithPath: path))
        let result = try runCommand(Paths.which("sha256sum"), [path])
        guard let digest = result.stdout.split(separator: " ").first else { throw TestFailure("sha256sum failed") }
        return (path, String(digest))
    }
}

enum FreePort {
    /// A loopback port that was free a moment ago and has nothing listening now (connections are refused), for a
    /// test that listens on it next. For a port that must stay refused, use `refusing()`: this one may be taken
    /// by any process meanwhile.
    static func closed() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        return try bindLoopback(fd)
    }

    /// A loopback port that refuses connections for the rest of the test run: bound (without SO_REUSEADDR) and
    /// never listening, so no other test's listener can take it meanwhile. The socket is never closed.
    static func refusing() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        return try bindLoopback(fd)
    }

    private static func bindLoopback(_ fd: Int32) throws -> Int {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw TestFailure("bind failed") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// A loopback listener with a backlog of one that never accepts; once two connections fill it, new
/// connection attempts get no answer, so a connect times out without any packet leaving the machine.
final class Blackhole {
    let port: Int
    private let listener: Int32
    private var fillers: [Int32] = []

    init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        listen(listener, 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(listener, $0, &length) }
        }
        self.port = Int(UInt16(bigEndian: address.sin_port))
        // Fill the accept queue with non-blocking connects.
        for _ in 0..<4 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            fillers.append(fd)
        }
    }

    deinit {
        fillers.forEach { close($0) }
        close(listener)
    }
}

import Foundation
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP client for byte-exact tests (bad requests, banners, half-close); every read has a timeout.
final class RawSocket {
    private let fd: Int32

    /// - Parameter receiveBuffer: a receive buffer this small (`SO_RCVBUF`), set before connecting, makes a slow
    ///   reader: the sender's writes queue up.
    init(host: String, port: Int, timeout: TimeInterval = 10, receiveBuffer: Int32? = nil) throws {
        let isV6 = host.contains(":")
        fd = socket(isV6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: \(errno)") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        if var size = receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        let result: Int32
        if isV6 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET6, host, &address.sin6_addr)
            result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, host, &address.sin_addr)
            result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        guard result == 0 else {
            close(fd)
            throw TestFailure("connect to \(host):\(port) failed: errno \(errno)")
        }
    }

    deinit {
        close(fd)
    }

    /// The close that ends this socket (when it goes) sends a TCP reset instead of a FIN.
    func resetOnClose() {
        var linger = Foundation.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Foundation.linger>.size))
    }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw TestFailure("send failed: errno \(errno)") }
            offset += sent
        }
    }

    func send(_ text: String) throws {
        try send(Array(text.utf8))
    }

    /// Stops sending (TCP FIN) but keeps reading.
    func shutdownWrite() {
        shutdown(fd, Int32(SHUT_WR))
    }

    /// Reads what is available (blocking up to the socket timeout); empty at EOF.
    func receive(max: Int = 65536) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: max)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, max, 0) }
        guard count >= 0 else { throw TestFailure("recv failed: errno \(errno) (timeout?)") }
        return Array(buffer[0..<count])
    }

    /// Reads until `marker` has arrived (or EOF), at most `limit` bytes.
    func receive(until marker: String, limit: Int = 1 << 20) throws -> String {
        var collected: [UInt8] = []
        while collected.count < limit {
            let chunk = try receive()
            if chunk.isEmpty { break }
            collected += chunk
            if String(decoding: collected, as: UTF8.self).contains(marker) { break }
        }
        return String(decoding: collected, as: UTF8.self)
    }

    /// Reads exactly `count` bytes unless EOF comes first.
    func receive(exactly count: Int) throws -> [UInt8] {
        var collected: [UInt8] = []
        while collected.count < count {
            let chunk = try receive(max: count - collected.count)
            if chunk.isEmpty { break }
            collected += chunk
        }
        return collected
    }

    /// Reads until the peer closes.
    func receiveAll(limit: Int = 1 << 20) throws -> String {
        String(decoding: try receiveAllBytes(limit: limit), as: UTF8.self)
    }

    /// Reads until the connection ends (at most `reads` reads): what came, and how it ended, "clean end" for a
    /// FIN or the receive error (a reset reads "… errno 104 …").
    func receiveUntilEnd(reads: Int = 1000) -> (bytes: [UInt8], ending: String) {
        var collected: [UInt8] = []
        for _ in 0..<reads {
            do {
                let bytes = try receive()
                if bytes.isEmpty { return (collected, "clean end") }
                collected += bytes
            } catch {
                return (collected, "\(error)")
            }
        }
        return (collected, "still open after \(reads) reads")
    }

    /// Reads until the peer closes, in reads of at most `chunk` bytes; with `pause`, a deliberately slow reader
    /// that waits that long after each read (what is under test is the sender facing one).
    func receiveAllBytes(limit: Int = 1 << 20, chunk: Int = 65536, pause: Duration? = nil) throws -> [UInt8] {
        var collected: [UInt8] = []
        while collected.count < limit {
            let bytes = try receive(max: chunk)
            if bytes.isEmpty { break }
            collected += bytes
            if let pause {
                let (seconds, attoseconds) = pause.components
                var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
                nanosleep(&request, nil)
            }
        }
        return collected
    }
}

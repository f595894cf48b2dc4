import NIOCore

/// The `Host` of a plain-HTTP request from a copy of a connection's first bytes, for transparent mode's report
/// (port 80 traffic has no SNI). Pure and strict: only a complete request line (`METHOD SP target SP
/// HTTP/1.x`) and a `Host` field within the first 8 KiB count; anything else is not HTTP, and nil.
enum HTTPHostSniff {
    static let limit = 8192

    /// The host (without a port, brackets removed from an IPv6 literal), lowercased.
    static func host(in buffer: ByteBuffer) -> String? {
        let bytes = Array(buffer.readableBytesView.prefix(limit))
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        var index = 0
        while index + 1 < bytes.count {
            if bytes[index] == 0x0D && bytes[index + 1] == 0x0A {
                if index == start { break }  // the blank line ends the head
                lines.append(bytes[start..<index])
                index += 2
                start = index
                continue
            }
            index += 1
        }
        guard let requestLine = lines.first, isRequestLine(requestLine) else { return nil }
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            let name = String(decoding: line[line.startIndex..<colon], as: UTF8.self)
            guard name.lowercased() == "host" else { continue }
            let value = String(String(decoding: line[(colon + 1)...], as: UTF8.self).trimmingASCIIWhitespace())
            return hostPart(of: value)
        }
        return nil
    }

    static func isRequestLine(_ line: ArraySlice<UInt8>) -> Bool {
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else { return false }
        let isToken = parts[0].allSatisfy { ($0 >= 0x41 && $0 <= 0x5A) || $0 == UInt8(ascii: "-") }
        let version = String(decoding: parts[2], as: UTF8.self)
        return isToken && (version == "HTTP/1.1" || version == "HTTP/1.0")
    }

    /// `example.com:8080` → `example.com`; `[::1]:80` → `::1`; nil for an empty or malformed value.
    static func hostPart(of value: String) -> String? {
        guard !value.isEmpty, !value.contains(" ") else { return nil }
        if value.hasPrefix("[") {
            guard let close = value.firstIndex(of: "]") else { return nil }
            return String(value[value.index(after: value.startIndex)..<close]).lowercased()
        }
        let host = value.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        return host.isEmpty ? nil : host.lowercased()
    }
}

import NIOCore

/// The hosts a plain-HTTP request names, from a copy of a connection's first bytes: for transparent mode's report
/// (port 80 traffic has no SNI), and for judging plain HTTP inside a CONNECT tunnel. Pure and strict: only a complete
/// request line (`METHOD SP target SP HTTP/1.x`) and fields ended within the first 8 KiB count; anything else is not
/// HTTP, and nil. Lines may end in a bare LF, as lenient servers accept them.
enum HTTPHostSniff {
    static let limit = 8192

    /// What the request names: its absolute-form target's host and every `Host` field's (lowercased, without a port,
    /// brackets removed from an IPv6 literal), and the first value that is not `host[:port]` a policy can judge.
    struct Names: Sendable, Hashable {
        /// The first `Host` field's host.
        var host: String?
        var all: [String] = []
        var invalid: String?
    }

    /// The first `Host` field's host.
    static func host(in buffer: ByteBuffer) -> String? { names(in: buffer)?.host }

    static func names(in buffer: ByteBuffer) -> Names? {
        let bytes = Array(buffer.readableBytesView.prefix(limit))
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        for index in bytes.indices where bytes[index] == 0x0A {
            var end = index
            if end > start && bytes[end - 1] == 0x0D { end -= 1 }
            if end == start { break }  // the blank line ends the head
            lines.append(bytes[start..<end])
            start = index + 1
        }
        guard let requestLine = lines.first, isRequestLine(requestLine) else { return nil }
        var names = Names()
        func add(_ value: String) {
            if Destination.isValidHostField(value), let host = hostPart(of: value) {
                names.all.append(host)
            } else if names.invalid == nil {
                names.invalid = String(value.prefix(64))
            }
        }
        let target = String(decoding: requestLine.split(separator: UInt8(ascii: " "))[1], as: UTF8.self)
        if let authority = InterceptedExchangeStateMachine.absoluteFormAuthority(target) { add(String(authority)) }
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            let name = String(decoding: line[line.startIndex..<colon], as: UTF8.self)
            guard name.lowercased() == "host" else { continue }
            let value = String(String(decoding: line[(colon + 1)...], as: UTF8.self).trimmingASCIIWhitespace())
            if names.host == nil { names.host = hostPart(of: value) }
            add(value)
        }
        return names
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

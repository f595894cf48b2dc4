import NIOCore

/// The hosts a plain-HTTP request names, from a copy of a connection's first bytes: for transparent mode's report
/// and policy (port 80 traffic has no SNI), and for judging plain HTTP inside a CONNECT tunnel. Pure.
///
/// Lenient in what it takes for HTTP, because the origin may be: a server that answers `GET  /x HTTP/1.2` with a
/// leading empty line, `Host : name`, a lowercase method or bare-LF line ends still routes by the names in it, so
/// they are read here too (and judged), not passed over as "not HTTP". What looks like a request line but has no
/// complete head yet is `needMore`: the head is read across segments up to the peek's limit, and a head that never
/// ends within it cannot be judged (`Names.invalid`).
enum HTTPHostSniff {
    /// What the request names: its absolute-form target's host and every `Host` field's (lowercased, without a port,
    /// brackets removed from an IPv6 literal), and the first value that is not `host[:port]` a policy can judge.
    struct Names: Sendable, Hashable {
        /// The name the request is for (RFC 9112 §3.2.2): its absolute-form target's host, else its first `Host`'s.
        /// Nil when neither is a valid host.
        var host: String?
        var all: [String] = []
        var invalid: String?
    }

    enum Outcome: Equatable {
        /// The bytes are not the start of an HTTP request.
        case notHTTP
        /// The start of a request whose head has not ended yet.
        case needMore
        case names(Names)
    }

    /// How many first bytes are read again at every segment, however they are cut: enough for any method and the
    /// whitespace after it, which is where bytes show they are not HTTP.
    static let methodLimit = 32

    /// The first `Host` field's host (or the absolute-form target's).
    static func host(in buffer: ByteBuffer) -> String? { names(in: buffer)?.host }

    /// The names in a complete head within `buffer`; nil when there is none.
    static func names(in buffer: ByteBuffer, limit: Int = 64 * 1024) -> Names? {
        if case .names(let names) = sniff(buffer, limit: limit) { return names }
        return nil
    }

    /// Reads `buffer` (a connection's first bytes, at most `limit` of them considered) as the start of a request.
    static func sniff(_ buffer: ByteBuffer, limit: Int) -> Outcome {
        buffer.readableBytesView.withContiguousStorageIfAvailable { sniff(Array($0.prefix(limit)), limit: limit) }
            ?? sniff(Array(buffer.readableBytesView.prefix(limit)), limit: limit)
    }

    private static let cr = UInt8(ascii: "\r")
    private static let lf = UInt8(ascii: "\n")
    private static let space = UInt8(ascii: " ")
    private static let tab = UInt8(ascii: "\t")

    static func sniff(_ bytes: [UInt8], limit: Int) -> Outcome {
        let atLimit = bytes.count >= limit
        // Empty lines before the request line are ignored by servers (RFC 9112 §2.2), as many as come.
        var start = 0
        while start < bytes.count, bytes[start] == cr || bytes[start] == lf { start += 1 }
        guard start < bytes.count else {
            return atLimit ? .names(unjudged("a request head longer than \(limit) bytes")) : .needMore
        }
        // The method: a token of any length (servers take any), then whitespace.
        var index = start
        while index < bytes.count, isTokenByte(bytes[index]) { index += 1 }
        if index == start { return .notHTTP }
        guard index < bytes.count else {
            return atLimit ? .names(unjudged("a request line longer than \(limit) bytes")) : .needMore
        }
        guard bytes[index] == space || bytes[index] == tab else { return .notHTTP }
        // The rest of the request line. A control character in it is another protocol's (git://, LDAP): HTTP servers
        // that route by Host refuse it. A CR not before the LF is a line end to some lenient readers: not judged.
        var lineEnd: Int?
        var scan = index
        while scan < bytes.count {
            let byte = bytes[scan]
            if byte == lf {
                lineEnd = scan
                break
            }
            if byte == cr {
                guard scan + 1 < bytes.count else { break }
                if bytes[scan + 1] != lf { return .names(unjudged("a CR alone in the request line")) }
            } else if byte < 0x20 && byte != tab || byte == 0x7f {
                return .notHTTP
            }
            scan += 1
        }
        guard let lineEnd else {
            return atLimit ? .names(unjudged("a request line longer than \(limit) bytes")) : .needMore
        }
        var lineBytes = bytes[start..<lineEnd]
        if lineBytes.last == cr { lineBytes = lineBytes.dropLast() }
        let words = lineBytes.split(whereSeparator: { $0 == space || $0 == tab })
        let method = String(decoding: words[0], as: UTF8.self)
        let hasVersion = words.count >= 3 && words.last!.count >= 5
            && String(decoding: words.last!.prefix(5), as: UTF8.self).uppercased() == "HTTP/"
        var names = Names()
        if words.count == 2 {
            // HTTP/0.9 (`GET /x`): no fields; its target is all there is to judge. Any other method with one word
            // after it is some other protocol's command (`NICK name`).
            guard method.uppercased() == "GET" else { return .notHTTP }
            addTarget(words[1], to: &names)
            return .names(names)
        }
        guard hasVersion else { return .notHTTP }
        if method == "PRI" && words.count == 3 && words[1].elementsEqual("*".utf8) {
            // HTTP/2 with prior knowledge: its hosts are in HPACK-coded :authority fields the proxy does not read.
            return .names(unjudged("an HTTP/2 connection (prior knowledge), whose :authority is not read"))
        }
        if words.count > 3 {
            // A target with whitespace in it: what a server takes for the target cannot be known.
            names.invalid = "a request line with spaces in its target"
        }
        if method.uppercased() == "CONNECT" {
            // Authority-form (`CONNECT host:port`): a proxy behind the tunnel would go there.
            add(String(decoding: words[1], as: UTF8.self), to: &names, isHost: false)
        } else {
            addTarget(words[1], to: &names)
        }
        // The fields, up to the empty line that ends the head.
        var lineStart = lineEnd + 1
        var lastWasHost = false
        while true {
            guard let end = bytes[lineStart...].firstIndex(of: lf) else {
                return bytes.count >= limit ? .names(unjudged("a request head longer than \(limit) bytes")) : .needMore
            }
            var line = bytes[lineStart..<end]
            if line.last == cr { line = line.dropLast() }
            lineStart = end + 1
            if line.contains(cr), names.invalid == nil {
                // A CR alone ends a line for some lenient readers (Python's header parser): a Host after it in the
                // same line would be read by them and not here.
                names.invalid = "a CR alone in a header line"
            }
            if line.isEmpty { break }
            if line.first == space || line.first == tab {
                // obs-fold: a continuation of the field before. One of a Host is a value no two readers agree on.
                if lastWasHost, names.invalid == nil { names.invalid = "a Host field folded over lines" }
                continue
            }
            lastWasHost = false
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            // `Host : x` is refused by strict servers and read as Host by lenient ones: it counts.
            let name = String(decoding: line[line.startIndex..<colon], as: UTF8.self).trimmingASCIIWhitespace()
            guard name.lowercased() == "host" else { continue }
            lastWasHost = true
            let value = String(String(decoding: line[(colon + 1)...], as: UTF8.self).trimmingASCIIWhitespace())
            add(value, to: &names, isHost: true)
        }
        return .names(names)
    }

    private static func unjudged(_ why: String) -> Names {
        Names(host: nil, all: [], invalid: why)
    }

    private static func addTarget(_ target: ArraySlice<UInt8>, to names: inout Names) {
        let text = String(decoding: target, as: UTF8.self)
        if let authority = InterceptedExchangeStateMachine.absoluteFormAuthority(text) {
            add(String(authority), to: &names, isHost: false)
        } else if !text.hasPrefix("/") && text != "*" && text.contains("://") {
            // An absolute URI the proxy cannot take apart names a host no one judged.
            if names.invalid == nil { names.invalid = String(text.prefix(64)) }
        }
    }

    private static func add(_ value: String, to names: inout Names, isHost: Bool) {
        // An empty Host names nothing (RFC 9112 §3.2: sent with a target that has no authority): the address is judged.
        if isHost && value.isEmpty { return }
        if Destination.isValidHostField(value), let host = hostPart(of: value) {
            names.all.append(host)
            // The absolute-form target's host comes first (it is added first); else the first Host's.
            if names.host == nil { names.host = host }
        } else if names.invalid == nil {
            names.invalid = String(value.prefix(64))
        }
    }

    /// RFC 9110 §5.6.2 tchar.
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
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

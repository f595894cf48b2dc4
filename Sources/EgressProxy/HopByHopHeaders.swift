import Foundation
import NIOHTTP1

/// Header handling for a forwarding proxy (RFC 9110 §7.6.1): drop the fields that describe one connection
/// only, so they are not passed on to the next hop.
enum HopByHopHeaders {
    // The fields that are always connection-specific (Connection, Proxy-Connection, Keep-Alive, TE, Trailer,
    // Upgrade), plus Proxy-Authorization and Proxy-Authenticate, which are meant for this proxy: see
    // `isFixedHopByHop`.

    /// `headers` without the fixed hop-by-hop fields and without every field named in `Connection`.
    static func stripped(_ headers: HTTPHeaders) -> HTTPHeaders {
        // Usually there is nothing to remove: then the headers are shared, not rebuilt.
        if !headers.contains(where: { isFixedHopByHop($0.name) }) {
            return headers
        }
        // Names listed in Connection / Proxy-Connection (rare beyond keep-alive and close).
        var named: [String] = []
        for (name, value) in headers
        where name.utf8.count >= 10 && (name.equalsIgnoringASCIICase("connection") || name.equalsIgnoringASCIICase("proxy-connection")) {
            for token in value.split(separator: ",") {
                let trimmed = token.trimmingCharacters(in: .whitespaces)
                if !trimmed.isEmpty { named.append(trimmed) }
            }
        }
        var result = HTTPHeaders()
        result.reserveCapacity(headers.count)
        for (name, value) in headers {
            if isFixedHopByHop(name) { continue }
            if !named.isEmpty && named.contains(where: { name.equalsIgnoringASCIICase($0) }) { continue }
            result.add(name: name, value: value)
        }
        return result
    }

    private static func isFixedHopByHop(_ name: String) -> Bool {
        switch name.utf8.count {
        case 2: return name.equalsIgnoringASCIICase("te")
        case 7: return name.equalsIgnoringASCIICase("trailer") || name.equalsIgnoringASCIICase("upgrade")
        case 10: return name.equalsIgnoringASCIICase("connection") || name.equalsIgnoringASCIICase("keep-alive")
        case 16: return name.equalsIgnoringASCIICase("proxy-connection")
        case 18: return name.equalsIgnoringASCIICase("proxy-authenticate")
        case 19: return name.equalsIgnoringASCIICase("proxy-authorization")
        default: return false
        }
    }

    /// The `Via` value this proxy adds (RFC 9110 §7.6.3).
    static func via(for version: HTTPVersion) -> String {
        "\(version.major).\(version.minor) kaizen-egress"
    }
}

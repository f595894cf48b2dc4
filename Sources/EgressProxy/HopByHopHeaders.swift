import Foundation
import NIOHTTP1

/// Header handling for a forwarding proxy (RFC 9110 §7.6.1): drop the fields that describe one connection
/// only, so they are not passed on to the next hop.
enum HopByHopHeaders {
    /// Fields that are always connection-specific, plus `Proxy-Authorization`, which is meant for this proxy.
    static let fixed: Set<String> = [
        "connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te",
        "trailer", "upgrade",
    ]

    /// `headers` without the fixed hop-by-hop fields and without every field named in `Connection`.
    static func stripped(_ headers: HTTPHeaders) -> HTTPHeaders {
        var named = fixed
        for value in headers[canonicalForm: "connection"] {
            named.insert(value.lowercased().trimmingCharacters(in: .whitespaces))
        }
        for value in headers[canonicalForm: "proxy-connection"] {
            named.insert(value.lowercased().trimmingCharacters(in: .whitespaces))
        }
        var result = HTTPHeaders()
        result.reserveCapacity(headers.count)
        for (name, value) in headers where !named.contains(name.lowercased()) {
            result.add(name: name, value: value)
        }
        return result
    }

    /// The `Via` value this proxy adds (RFC 9110 §7.6.3).
    static func via(for version: HTTPVersion) -> String {
        "\(version.major).\(version.minor) kaizen-egress"
    }
}

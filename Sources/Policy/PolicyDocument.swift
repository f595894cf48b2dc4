import ControlPlane
import Foundation

/// The control plane's answer to `GET /v1/policy?agent=NAME`:
/// `{"policies":[{"name":…,"mode":"allowlist"|"blocklist"|"correlation","enabled":true,"rules":{"domains":[…],"ips":[…],…}}]}`.
public struct PolicyDocument: Sendable, Hashable {
    public var policies: PolicySet
    /// What the proxy does not apply, one line each (rule kinds, unknown modes, invalid entries), for the log.
    public var notes: [String]
    /// What the proxy applies otherwise than its author most likely meant, one line each, for the log's errors: an
    /// allowlist whose every `domains` and `ips` entry is invalid admits no destination at all.
    public var problems: [String]

    public struct Invalid: Error, Sendable, Hashable, CustomStringConvertible {
        public var description: String
    }

    /// The largest policy answer accepted.
    public static let maxBytes = 8 << 20

    public init(parsing bytes: some Collection<UInt8>) throws(Invalid) {
        guard bytes.count <= Self.maxBytes else { throw Invalid(description: "the policy is larger than \(Self.maxBytes) bytes") }
        let root: Any
        do {
            root = try JSONSerialization.jsonObject(with: Data(bytes), options: [])
        } catch {
            throw Invalid(description: "the policy is not JSON")
        }
        guard let object = root as? [String: Any], let list = object["policies"] as? [Any] else {
            throw Invalid(description: "the policy has no \"policies\" array")
        }
        var policies: [DestinationPolicy] = []
        var notes: [String] = []
        var problems: [String] = []
        for (index, item) in list.enumerated() {
            guard let entry = item as? [String: Any] else {
                throw Invalid(description: "policy \(index) is not an object")
            }
            guard let name = entry["name"] as? String, !name.isEmpty else {
                throw Invalid(description: "policy \(index) has no name")
            }
            let shown = Self.printable(name)
            guard let modeText = entry["mode"] as? String else {
                throw Invalid(description: "policy \(shown) has no mode")
            }
            let enabled: Bool
            switch entry["enabled"] {
            case nil, is NSNull: enabled = true
            case let flag as Bool: enabled = flag
            default: throw Invalid(description: "policy \(shown): \"enabled\" is not true or false")
            }
            let rules: [String: Any]
            switch entry["rules"] {
            case nil, is NSNull: rules = [:]
            case let object as [String: Any]: rules = object
            default: throw Invalid(description: "policy \(shown): \"rules\" is not an object")
            }
            func strings(_ key: String) throws(Invalid) -> [String] {
                switch rules[key] {
                case nil, is NSNull: return []
                case let array as [Any]:
                    var out: [String] = []
                    for element in array {
                        guard let text = element as? String else {
                            throw Invalid(description: "policy \(shown): \"\(key)\" holds something that is not a string")
                        }
                        out.append(text)
                    }
                    return out
                default:
                    throw Invalid(description: "policy \(shown): \"\(key)\" is not an array")
                }
            }
            let domains = try strings("domains")
            let ips = try strings("ips")
            let ignored = rules.keys.filter { $0 != "domains" && $0 != "ips" }.sorted()
            guard let mode = DestinationPolicy.Mode(rawValue: modeText.lowercased()) else {
                notes.append("policy \(shown) has mode \(Self.printable(modeText)), which the proxy does not know; it is not applied")
                continue
            }
            let policy = DestinationPolicy(
                name: name, mode: mode, enabled: enabled, domains: domains, ips: ips, ignoredRuleKinds: ignored)
            if !ignored.isEmpty && mode != .correlation {
                notes.append(
                    "policy \(shown): rule kinds \(ignored.map(Self.printable).joined(separator: ", ")) do not name destinations; the proxy keeps them and applies domains and ips only"
                )
            }
            if mode == .allowlist && !policy.appliesToDestinations {
                notes.append(
                    "policy \(shown) is an allowlist without a domains or ips rule; it says nothing about destinations and is not applied to them"
                )
            } else if mode == .allowlist && !policy.hasDestinationRules {
                // A typo (`example.com:443`, a URL) must not turn an allowlist into no restriction: it admits nothing.
                problems.append(
                    "policy \(shown) is an allowlist whose every domains and ips entry is invalid (\(policy.invalidEntries.prefix(3).map { "\"\(Self.printable($0))\"" }.joined(separator: ", "))): it admits no destination, so every destination is blocked\(enabled ? "" : " once it is enabled"); write host names (example.com, *.example.com) and addresses or CIDRs, without ports or schemes"
                )
            }
            if !policy.invalidEntries.isEmpty {
                notes.append(
                    "policy \(shown): \(policy.invalidEntries.prefix(5).map { "\"\(Self.printable($0))\"" }.joined(separator: ", ")) \(policy.invalidEntries.count == 1 ? "is" : "are") not a domain, address or range and \(policy.invalidEntries.count == 1 ? "is" : "are") ignored"
                )
            }
            policies.append(policy)
        }
        self.policies = PolicySet(policies)
        self.notes = notes
        self.problems = problems
    }

    /// At most 128 characters, control and non-ASCII characters escaped, for log lines.
    static func printable(_ text: String) -> String { LogText.printable(text, limit: 128) }
}

import AccessControl
import Testing

@testable import Policy

@Suite("Policy decisions")
struct PolicySetTests {
    private func ip(_ text: String) -> IPAddress { IPAddress(text)! }

    @Test("a domain rule matches the name and every name below it, not names that merely end the same")
    func domainRules() {
        let policy = DestinationPolicy(name: "p", mode: .blocklist, domains: ["Example.COM.", "*.wild.test"])
        #expect(policy.matches(host: "example.com", address: nil))
        #expect(policy.matches(host: "API.example.com", address: nil))
        #expect(policy.matches(host: "a.b.example.com.", address: nil))
        #expect(!policy.matches(host: "notexample.com", address: nil))
        #expect(!policy.matches(host: "example.com.evil.test", address: nil))
        #expect(!policy.matches(host: "com", address: nil))
        #expect(policy.matches(host: "x.wild.test", address: nil))
        #expect(!policy.matches(host: "wild.test", address: nil), "*.suffix covers the names below it only")
    }

    @Test("an ips rule matches addresses and ranges, IPv4-mapped IPv6 included, and never a name")
    func addressRules() {
        let policy = DestinationPolicy(name: "p", mode: .blocklist, ips: ["192.0.2.0/24", "2001:db8::1", "[2001:db8:1::]/48"])
        #expect(policy.matches(host: nil, address: ip("192.0.2.77")))
        #expect(policy.matches(host: nil, address: ip("::ffff:192.0.2.1")))
        #expect(policy.matches(host: nil, address: ip("2001:db8::1")))
        #expect(policy.matches(host: nil, address: ip("2001:db8:1:ffff::9")))
        #expect(!policy.matches(host: nil, address: ip("198.51.100.1")))
        #expect(!policy.matches(host: "192.0.2.1.example", address: nil))
    }

    @Test("invalid entries are kept aside, not matched")
    func invalidEntries() {
        let policy = DestinationPolicy(name: "p", mode: .blocklist, domains: ["ok.test", "bad name", "", "a..b"], ips: ["10.0.0.0/33", "x"])
        #expect(policy.domains == ["ok.test"])
        #expect(policy.invalidEntries == ["bad name", "", "a..b", "10.0.0.0/33", "x"])
    }

    @Test("blocklists block what they match; allowlists block what they do not match")
    func decisions() {
        let set = PolicySet([
            DestinationPolicy(name: "no-paste", mode: .blocklist, domains: ["pastebin.com"]),
            DestinationPolicy(name: "only-known", mode: .allowlist, domains: ["example.com", "pastebin.com"], ips: ["192.0.2.0/24"]),
            DestinationPolicy(name: "watch", mode: .correlation, domains: ["anything.test"]),
        ])
        #expect(set.decide(host: "api.example.com", address: ip("203.0.113.5")) == .allow)
        #expect(set.decide(host: "pastebin.com", address: ip("203.0.113.5")) == .block(policy: "no-paste"), "the blocklist wins")
        #expect(set.decide(host: "other.test", address: ip("203.0.113.5")) == .block(policy: "only-known"))
        #expect(set.decide(host: "other.test", address: ip("192.0.2.9")) == .allow, "the allowlist's ips rule")
        #expect(set.decide(host: "192.0.2.9", address: nil) == .allow, "an IP literal is its own address")
        #expect(set.decide(host: "[2001:db8::5]", address: nil) == .block(policy: "only-known"))
        #expect(set.decide(host: nil, address: ip("198.51.100.1")) == .block(policy: "only-known"))
    }

    @Test("before the address is known, an allowlist with ips rules does not block yet; a blocklist name match does")
    func undecidedUntilResolved() {
        let set = PolicySet([
            DestinationPolicy(name: "deny", mode: .blocklist, domains: ["bad.test"], ips: ["198.51.100.0/24"]),
            DestinationPolicy(name: "allow", mode: .allowlist, domains: ["good.test"], ips: ["192.0.2.0/24"]),
        ])
        #expect(set.decide(host: "unknown.test", address: nil, complete: false) == .allow)
        #expect(set.decide(host: "unknown.test", address: nil) == .block(policy: "allow"), "complete: no address will come")
        #expect(set.decide(host: "unknown.test", address: ip("192.0.2.1")) == .allow)
        #expect(set.decide(host: "unknown.test", address: ip("203.0.113.1")) == .block(policy: "allow"))
        #expect(set.decide(host: "bad.test", address: nil, complete: false) == .block(policy: "deny"))
        // A transparent connection: the address first, the name (SNI) later.
        #expect(set.decide(host: nil, address: ip("203.0.113.1"), complete: false) == .allow)
        #expect(set.decide(host: nil, address: ip("198.51.100.1"), complete: false) == .block(policy: "deny"))
        #expect(set.decide(host: "good.test", address: ip("203.0.113.1")) == .allow)
        #expect(set.decide(host: nil, address: ip("203.0.113.1")) == .block(policy: "allow"), "no name ever came")
        #expect(set.decide(host: "good.test", address: ip("198.51.100.7")) == .block(policy: "deny"))
        let namesOnly = PolicySet([DestinationPolicy(name: "names", mode: .allowlist, domains: ["good.test"])])
        #expect(namesOnly.decide(host: "unknown.test", address: nil, complete: false) == .block(policy: "names"), "nothing left to match")
    }

    @Test("an address among the domains is an address rule; NAT64, 6to4 and mapped forms match IPv4 rules")
    func addressForms() {
        let policy = DestinationPolicy(name: "p", mode: .blocklist, domains: ["192.0.2.7", "[2001:db8::7]"], ips: ["198.51.100.0/24"])
        #expect(policy.domains.isEmpty)
        #expect(policy.matches(host: nil, address: ip("192.0.2.7")))
        #expect(policy.matches(host: nil, address: ip("2001:db8::7")))
        #expect(PolicySet([policy]).decide(host: "192.0.2.7", address: nil) == .block(policy: "p"))
        for form in ["::ffff:198.51.100.9", "64:ff9b::198.51.100.9", "2002:c633:6409::1"] {
            #expect(policy.matches(host: nil, address: ip(form)), "\(form)")
        }
        #expect(!policy.matches(host: nil, address: ip("64:ff9b::203.0.113.9")))
        // A rule written in IPv4-mapped form matches the IPv4 address itself.
        let mapped = DestinationPolicy(name: "m", mode: .blocklist, ips: ["::ffff:203.0.113.3", "::ffff:198.51.100.0/120"])
        #expect(mapped.matches(host: nil, address: ip("203.0.113.3")))
        #expect(mapped.matches(host: nil, address: ip("198.51.100.77")))
        #expect(!mapped.matches(host: nil, address: ip("203.0.113.4")))
    }

    @Test("an allowlist with no destination rule takes no part, one whose every entry is invalid admits nothing; two allowlists must both admit")
    func allowlistsWithoutDestinationRules() {
        let toolsOnly = DestinationPolicy(name: "tools", mode: .allowlist, ignoredRuleKinds: ["tools"])
        #expect(PolicySet([toolsOnly]).decide(host: "example.com", address: ip("203.0.113.1")) == .allow)
        // A typo must not turn an allowlist into no restriction at all: it blocks, before the name or address is known too.
        let invalidOnly = DestinationPolicy(name: "typo", mode: .allowlist, domains: ["example.com:443"], ips: ["https://example.com/"])
        let typo = PolicySet([toolsOnly, invalidOnly])
        #expect(typo.decide(host: "example.com", address: ip("203.0.113.1")) == .block(policy: "typo"))
        #expect(typo.decide(host: "example.com", address: nil, complete: false) == .block(policy: "typo"))
        #expect(typo.decide(host: nil, address: ip("203.0.113.1"), complete: false) == .block(policy: "typo"))
        let both = PolicySet([
            DestinationPolicy(name: "a", mode: .allowlist, domains: ["example.com", "example.org"]),
            DestinationPolicy(name: "b", mode: .allowlist, domains: ["example.com"]),
        ])
        #expect(both.decide(host: "example.com", address: nil) == .allow)
        #expect(both.decide(host: "example.org", address: nil) == .block(policy: "b"))
    }

    @Test("disabled policies and correlation policies never block")
    func inactivePolicies() {
        let set = PolicySet([
            DestinationPolicy(name: "off", mode: .blocklist, enabled: false, domains: ["example.com"]),
            DestinationPolicy(name: "corr", mode: .correlation, domains: ["example.com"]),
            DestinationPolicy(name: "off-allow", mode: .allowlist, enabled: false, domains: []),
        ])
        #expect(set.decide(host: "example.com", address: ip("192.0.2.1")) == .allow)
        #expect(PolicySet.empty.decide(host: "example.com", address: nil) == .allow)
    }
}

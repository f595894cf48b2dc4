import AccessControl
import Testing

@testable import Policy

@Suite("Policy document")
struct PolicyDocumentTests {
    private func parse(_ json: String) throws(PolicyDocument.Invalid) -> PolicyDocument {
        try PolicyDocument(parsing: Array(json.utf8))
    }

    @Test("the control plane's shape: modes, enabled, domains and ips; other rule kinds noted")
    func shape() throws {
        let document = try parse(
            #"""
            {"policies":[
              {"name":"deny-paste","mode":"blocklist","enabled":true,"rules":{"domains":["pastebin.com"],"ips":["198.51.100.0/24"]}},
              {"name":"tools","mode":"allowlist","rules":{"domains":["example.com"],"tools":["shell"],"paths":["/x"]}},
              {"name":"old","mode":"blocklist","enabled":false,"rules":{"domains":["example.org"]}},
              {"name":"spikes","mode":"correlation","rules":{"window":"5m"}}
            ],"etag":"ignored"}
            """#)
        let policies = document.policies.policies
        #expect(policies.map(\.name) == ["deny-paste", "tools", "old", "spikes"])
        #expect(policies.map(\.mode) == [.blocklist, .allowlist, .blocklist, .correlation])
        #expect(policies.map(\.enabled) == [true, true, false, true])
        #expect(policies[0].ranges.map(\.description) == ["198.51.100.0/24"])
        #expect(policies[1].ignoredRuleKinds == ["paths", "tools"])
        #expect(document.notes.count == 1)
        #expect(document.notes[0].contains("paths, tools"))
        #expect(document.policies.decide(host: "pastebin.com", address: nil) == .block(policy: "deny-paste"))
    }

    @Test("an unknown mode is noted and not applied; invalid entries are noted")
    func unknownMode() throws {
        let document = try parse(
            #"{"policies":[{"name":"future","mode":"quarantine","rules":{"domains":["x.test"]}},{"name":"b","mode":"blocklist","rules":{"domains":["bad name"]}}]}"#)
        #expect(document.policies.policies.map(\.name) == ["b"])
        #expect(document.notes.count == 2)
        #expect(document.notes[0].contains("quarantine"))
        #expect(document.notes[1].contains("\"bad name\""))
    }

    @Test("an allowlist of only invalid entries is a problem (it blocks everything); one with no destination rule a note")
    func anAllowlistOfTypos() throws {
        let document = try parse(
            #"{"policies":[{"name":"typo","mode":"allowlist","rules":{"domains":["api.test:443"]}},{"name":"t","mode":"allowlist","rules":{"tools":["x"]}}]}"#)
        #expect(document.problems.count == 1)
        #expect(document.problems.first?.contains(#"policy typo is an allowlist whose every domains and ips entry is invalid ("api.test:443"): it admits no destination"#) == true, "\(document.problems)")
        #expect(document.notes.contains { $0.contains("policy t is an allowlist without a domains or ips rule") }, "\(document.notes)")
        #expect(document.policies.decide(host: "api.test", address: nil) == .block(policy: "typo"))
    }

    @Test(
        "malformed documents are refused with a reason",
        arguments: [
            ("", "not JSON"),
            ("{", "not JSON"),
            ("[]", "no \"policies\" array"),
            (#"{"policies":{}}"#, "no \"policies\" array"),
            (#"{"policies":[1]}"#, "policy 0 is not an object"),
            (#"{"policies":[{"mode":"blocklist"}]}"#, "policy 0 has no name"),
            (#"{"policies":[{"name":"a"}]}"#, "policy a has no mode"),
            (#"{"policies":[{"name":"a","mode":"blocklist","enabled":"yes"}]}"#, "\"enabled\" is not true or false"),
            (#"{"policies":[{"name":"a","mode":"blocklist","rules":[]}]}"#, "\"rules\" is not an object"),
            (#"{"policies":[{"name":"a","mode":"blocklist","rules":{"domains":"x.test"}}]}"#, "\"domains\" is not an array"),
            (#"{"policies":[{"name":"a","mode":"blocklist","rules":{"ips":[1]}}]}"#, "\"ips\" holds something that is not a string"),
        ])
    func malformed(json: String, reason: String) {
        #expect {
            try parse(json)
        } throws: { error in
            "\(error)".contains(reason)
        }
    }

    @Test("an empty list is a valid policy that blocks nothing")
    func empty() throws {
        let document = try parse(#"{"policies":[]}"#)
        #expect(document.policies.policies.isEmpty)
        #expect(document.policies.decide(host: "anything.test", address: nil) == .allow)
    }

    @Test("agent names are percent-encoded in the query")
    func queryEncoding() {
        #expect(PolicyStore.percentEncoded("egress-agent") == "egress-agent")
        #expect(PolicyStore.percentEncoded("a b&c=d/é") == "a%20b%26c%3Dd%2F%C3%A9")
    }
}

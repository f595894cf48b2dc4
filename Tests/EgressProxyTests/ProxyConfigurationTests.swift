@testable import EgressProxy
import Audit
import Foundation
import Logging
import NIOCore
import AccessControl
import Interception
import OpenSSLTLS
import TestSupport
import Testing

@Suite struct ProxyConfigurationTests {
    let local = ["KAIZEN_LOCAL": "1"]

    /// The proxy's settings in the shipped Kubernetes manifests start the proxy: none is empty (refused since empty
    /// values are), and each is accepted (the CA files, which only exist in a cluster, aside).
    @Test func theShippedManifestsSettingsAreAccepted() throws {
        let deploy = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../deploy").standardized
        let files = try FileManager.default.contentsOfDirectory(atPath: deploy.path).filter { $0.hasSuffix(".yaml") }
        #expect(!files.isEmpty)
        let entry = /^\s*- \{name: ((?:KAIZEN_|PORT)[A-Z_]*), value: "?([^"}]*)"?\}/
        for file in files {
            let text = try String(contentsOf: deploy.appendingPathComponent(file), encoding: .utf8)
            var environment = local
            for line in text.split(separator: "\n") {
                guard let match = line.firstMatch(of: entry) else { continue }
                let (name, value) = (String(match.1), String(match.2).trimmingCharacters(in: .whitespaces))
                #expect(!value.isEmpty, "\(file): \(name) is empty")
                if name != "KAIZEN_CA_CERT" && name != "KAIZEN_CA_KEY" && name != "KAIZEN_TRANSPARENT_PORT" || file == "sidecar.yaml" {
                    environment[name] = value
                }
            }
            environment["KAIZEN_CA_CERT"] = nil
            environment["KAIZEN_CA_KEY"] = nil
            #expect(throws: Never.self, "\(file)") { _ = try ProxyConfiguration(environment: environment) }
        }
    }

    @Test func defaultsMatchTheProductPage() throws {
        let configuration = try ProxyConfiguration(environment: local)
        #expect(configuration.port == 8080)
        #expect(configuration.listenAddress == "127.0.0.1")
        #expect(configuration.agent == "egress-agent")
        #expect(configuration.apiURL == "https://api.getkaizen.io")
        #expect(configuration.apiKey == nil)
        #expect(configuration.local)
        #expect(configuration.auditLogPath == nil)
        #expect(configuration.connectTimeout == .seconds(10))
        #expect(configuration.idleTimeout == .hours(1))
        #expect(configuration.drainTimeout == .seconds(10))
        #expect(configuration.deliveryTimeout == .seconds(30))
        #expect(configuration.clientHelloTimeout == .seconds(10))
        #expect(configuration.clientHelloLimit == 64 * 1024)
    }

    @Test func readsEveryVariable() throws {
        let configuration = try ProxyConfiguration(environment: [
            "PORT": "3200", "KAIZEN_LISTEN": "[::1]", "KAIZEN_AGENT": "my agent", "KAIZEN_LOCAL": "true",
            "KAIZEN_API_URL": "http://127.0.0.1:9999/", "KAIZEN_AUDIT_LOG": "/tmp/audit.jsonl",
            "KAIZEN_CONNECT_TIMEOUT": "500ms", "KAIZEN_IDLE_TIMEOUT": "90", "KAIZEN_DRAIN_SECONDS": "0",
            "KAIZEN_LOG_LEVEL": "DEBUG", "KAIZEN_DELIVERY_TIMEOUT": "2s",
        ])
        #expect(configuration.port == 3200)
        #expect(configuration.listenAddress == "::1")
        #expect(configuration.agent == "my agent")
        #expect(configuration.apiURL == "http://127.0.0.1:9999")
        #expect(configuration.auditLogPath == "/tmp/audit.jsonl")
        #expect(configuration.connectTimeout == .milliseconds(500))
        #expect(configuration.idleTimeout == .seconds(90))
        #expect(configuration.drainTimeout == .seconds(0))
        #expect(configuration.logLevel == .debug)
        #expect(configuration.deliveryTimeout == .seconds(2))
    }

    /// KAIZEN_DELIVERY_TIMEOUT is at least a second: 1s starts, anything shorter refuses to with the fix.
    @Test func theDeliveryTimeoutIsAtLeastOneSecond() throws {
        #expect(try ProxyConfiguration(environment: local.merging(["KAIZEN_DELIVERY_TIMEOUT": "1s"]) { $1 }).deliveryTimeout == .seconds(1))
        for short in ["999ms", "500ms", "1ms"] {
            #expect {
                _ = try ProxyConfiguration(environment: local.merging(["KAIZEN_DELIVERY_TIMEOUT": short]) { $1 })
            } throws: { error in
                let error = error as? ConfigurationError
                return error?.variable == "KAIZEN_DELIVERY_TIMEOUT" && error?.description.contains("at least 1s") == true
            }
        }
    }

    /// Each bad value refuses to start with one line that names the variable and says how to fix it.
    @Test(arguments: [
        ("PORT", "70000"), ("PORT", "-1"), ("PORT", "http"), ("KAIZEN_LISTEN", "localhost"),
        ("KAIZEN_LISTEN", "300.1.1.1"), ("KAIZEN_API_URL", "http://api.getkaizen.io"),
        ("KAIZEN_API_URL", "ftp://127.0.0.1"), ("KAIZEN_API_URL", "not a url"),
        ("KAIZEN_API_URL", "https://user:pw@api.getkaizen.io"), ("KAIZEN_LOCAL", "maybe"),
        ("KAIZEN_CONNECT_TIMEOUT", "0s"), ("KAIZEN_IDLE_TIMEOUT", "soon"), ("KAIZEN_DELIVERY_TIMEOUT", "0s"), ("KAIZEN_DELIVERY_TIMEOUT", "999ms"), ("KAIZEN_DRAIN_SECONDS", "-5"),
        ("KAIZEN_LOG_LEVEL", "loud"), ("KAIZEN_AGENT", "bad\u{7}name"), ("KAIZEN_AGENT", ""), ("KAIZEN_AGENT", " "), ("KAIZEN_ALLOW_CLIENTS", ""), ("KAIZEN_CONNECT_PORTS", " "),
        ("KAIZEN_POLICY_FAIL", ""), ("KAIZEN_API_KEY", ""), ("PORT", ""), ("PORT", "+3430"), ("KAIZEN_CONNECT_PORTS", "+443"), ("KAIZEN_ALLOW_PRIVATE", "foo..bar"),
        ("KAIZEN_MAX_CONNECTIONS", "+5"), ("KAIZEN_INSPECT_REQUIRED", "1"), ("KAIZEN_INSPECT_REQUIRED", "maybe"),
        ("KAIZEN_DENY_DESTINATIONS", ","), ("KAIZEN_ALLOW_PRIVATE", " , "), ("KAIZEN_PASSTHROUGH_HOSTS", ",,"), ("KAIZEN_SPOOL_MAX_BYTES", "+8M"), ("KAIZEN_MODE", "block"),
        ("KAIZEN_MODE", "enforce"), ("KAIZEN_POLICY_FAIL", "maybe"), ("KAIZEN_POLICY_REFRESH", "often"),
        ("KAIZEN_H2_MAX_STREAMS", "0"), ("KAIZEN_H2_MAX_STREAMS", "many"), ("KAIZEN_H2_BUFFER_BYTES", "1K"),
        ("KAIZEN_H2_BUFFER_BYTES", "2G"), ("KAIZEN_INSPECT_HTTP2", "maybe"),
        ("KAIZEN_API_URL", "http://127.0.0.1:9999/base#frag"), ("KAIZEN_API_KEY", "kz_live_X\r\nX-Evil: 1"),
        ("KAIZEN_API_KEY", "kz live"), ("KAIZEN_API_KEY", "kz_live_\u{e9}"),
    ])
    func badValueNamesTheVariable(_ variable: String, _ value: String) {
        var environment = local
        environment[variable] = value
        do {
            _ = try ProxyConfiguration(environment: environment)
            Issue.record("\(variable)=\(value) was accepted")
        } catch {
            #expect(error.variable == variable)
            #expect(error.description.hasPrefix(variable))
            #expect(!error.description.contains("\n"))
            #expect(error.description.contains("set ") || error.description.contains("use "))
            if variable == "KAIZEN_API_KEY" && !value.isEmpty { #expect(!error.description.contains(value.prefix(8))) }
        }
    }

    /// A control plane on this machine may be reached over http, however its loopback address is written.
    @Test(arguments: ["http://127.0.0.1:9999", "http://127.1.2.3:9999/", "http://localhost:9999", "http://[::1]:9999", "http://[0:0:0:0:0:0:0:1]:9999"])
    func loopbackControlPlanesMayUseHTTP(_ url: String) throws {
        _ = try ProxyConfiguration(environment: local.merging(["KAIZEN_API_URL": url]) { $1 })
    }

    @Test func http2Limits() throws {
        let defaults = try ProxyConfiguration(environment: local)
        #expect(defaults.http2Limits.maxConcurrentStreams == 100)
        #expect(defaults.http2Limits.bufferBytes == 64 << 20)
        #expect(defaults.http2Limits.streamWindow == (64 << 20) / 800)
        #expect(defaults.http2Limits.maxHeaderListSize == 64 * 1024)
        #expect(defaults.inspectHTTP2)
        #expect(try !ProxyConfiguration(environment: local.merging(["KAIZEN_INSPECT_HTTP2": "off"]) { $1 }).inspectHTTP2)
        var environment = local
        environment["KAIZEN_H2_MAX_STREAMS"] = "10"
        environment["KAIZEN_H2_BUFFER_BYTES"] = "4M"
        environment["KAIZEN_MAX_HEADER_BYTES"] = "16K"
        let set = try ProxyConfiguration(environment: environment)
        #expect(set.http2Limits.maxConcurrentStreams == 10 && set.http2Limits.streamWindow == 52_428)
        #expect(set.http2Limits.maxHeaderListSize == 16 * 1024)
        // A buffer that leaves each stream less than a 16K window is refused, naming the variable and the fix.
        environment["KAIZEN_H2_MAX_STREAMS"] = "1000"
        #expect {
            _ = try ProxyConfiguration(environment: environment)
        } throws: { error in
            let error = error as? ConfigurationError
            return error?.variable == "KAIZEN_H2_BUFFER_BYTES" && error?.description.contains("at least 131072000") == true
        }
    }

    @Test func policySettings() throws {
        let defaults = try ProxyConfiguration(environment: local)
        #expect(defaults.policyMode == .observe)
        #expect(!defaults.policyFailClosed)
        #expect(defaults.policyRefresh == .seconds(60))
        let set = try ProxyConfiguration(environment: [
            "KAIZEN_API_KEY": "k", "KAIZEN_MODE": "Enforce", "KAIZEN_POLICY_FAIL": "closed", "KAIZEN_POLICY_REFRESH": "5m",
        ])
        #expect(set.policyMode == .enforce)
        #expect(set.policyFailClosed)
        #expect(set.policyRefresh == .minutes(5))
    }

    @Test func listsFromFiles() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kz-lists-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func file(_ name: String, _ text: String) throws -> String {
            try text.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8)
            return "@" + directory + "/" + name
        }
        let configuration = try ProxyConfiguration(environment: local.merging([
            "KAIZEN_ALLOW_CLIENTS": try file("clients", "10.0.0.0/8  # office\n\n# none else\nfd00::/8, 192.0.2.1\n"),
            "KAIZEN_PASSTHROUGH_HOSTS": try file("pass", "bank.example\n*.health.example\n"),
            "KAIZEN_INSPECT_HOSTS": try file("inspect", "# nothing yet\n"),
        ]) { $1 })
        #expect(configuration.allowedClients?.map(\.description) == ["10.0.0.0/8", "fd00::/8", "192.0.2.1/32"])
        #expect(configuration.passthroughHosts?.matches("a.health.example") == true)
        // An emptied inspect file inspects nothing; an emptied client file is refused, never "any client".
        #expect(configuration.inspectHosts?.matches("example.com") == false)
        #expect(throws: ConfigurationError.self) {
            _ = try ProxyConfiguration(environment: local.merging(["KAIZEN_ALLOW_CLIENTS": try file("empty", "# all gone\n")]) { $1 })
        }
        #expect {
            _ = try ProxyConfiguration(environment: local.merging(["KAIZEN_PASSTHROUGH_HOSTS": "@" + directory + "/missing"]) { $1 })
        } throws: { error in
            "\(error)".hasPrefix("KAIZEN_PASSTHROUGH_HOSTS=@") && "\(error)".contains("cannot be read")
        }
    }

    @Test func withoutKeyOrLocalModeRefusesNamingBoth() {
        #expect {
            _ = try ProxyConfiguration(environment: [:])
        } throws: { error in
            let message = (error as? ConfigurationError)?.description ?? ""
            return message.contains("KAIZEN_API_KEY") && message.contains("--local")
        }
    }

    @Test func aKeyAloneIsEnoughAndErrorsNeverShowIt() throws {
        let secret = "kz_live_CANARY_0123456789"
        let configuration = try ProxyConfiguration(environment: ["KAIZEN_API_KEY": secret])
        #expect(configuration.apiKey?.value == secret)
        #expect(!configuration.local)
        #expect(configuration.spoolDirectory == ".kaizen/spool")
        #expect(configuration.spoolMaxBytes == 256 << 20)
        #expect {
            _ = try ProxyConfiguration(environment: ["KAIZEN_API_KEY": secret, "PORT": "http"])
        } throws: { error in
            !"\(error)".contains(secret)
        }
    }

    @Test func spoolAndControlPlaneSettings() throws {
        let configuration = try ProxyConfiguration(environment: [
            "KAIZEN_LOCAL": "1", "KAIZEN_SPOOL_DIR": "/var/lib/kaizen/spool", "KAIZEN_SPOOL_MAX_BYTES": "2G",
            "KAIZEN_API_CA_FILE": "/etc/hostname",
        ])
        #expect(configuration.spoolDirectory == "/var/lib/kaizen/spool")
        #expect(configuration.spoolMaxBytes == 2 << 30)
        #expect(configuration.apiCAFile == "/etc/hostname")
        for (variable, value) in [("KAIZEN_SPOOL_MAX_BYTES", "10K"), ("KAIZEN_SPOOL_MAX_BYTES", "lots"), ("KAIZEN_API_CA_FILE", "/nonexistent.pem")] {
            #expect(throws: ConfigurationError.self, "\(variable)=\(value)") {
                try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", variable: value])
            }
        }
    }

    @Test func apiKeyDescriptionIsRedacted() throws {
        let configuration = try ProxyConfiguration(environment: ["KAIZEN_API_KEY": "kz_live_SECRET", "KAIZEN_LOCAL": "1"])
        #expect(configuration.apiKey?.value == "kz_live_SECRET")
        #expect("\(configuration.apiKey!)" == "<redacted>")
        #expect(!"\(configuration)".contains("kz_live_SECRET"))
    }

    @Test func dnsCacheTTLCanBeTurnedOff() throws {
        #expect(try ProxyConfiguration(environment: local).dnsCacheTTL == .seconds(5))
        #expect(try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_DNS_CACHE_TTL": "0"]).dnsCacheTTL == .zero)
        #expect(try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_DNS_CACHE_TTL": "30s"]).dnsCacheTTL == .seconds(30))
        #expect(throws: ConfigurationError.self) {
            try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_DNS_CACHE_TTL": "-1"])
        }
    }

    @Test func memoryTrimCanBeTurnedOff() throws {
        #expect(try ProxyConfiguration(environment: local).memoryTrimInterval == .seconds(10))
        #expect(try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_MEMORY_TRIM_INTERVAL": "0"]).memoryTrimInterval == .zero)
        #expect(try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_MEMORY_TRIM_INTERVAL": "500ms"]).memoryTrimInterval == .milliseconds(500))
        #expect(throws: ConfigurationError.self) {
            try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_MEMORY_TRIM_INTERVAL": "often"])
        }
    }

    @Test func upstreamReuseCanBeTurnedOffAndABadValueNamesTheVariable() throws {
        #expect(try ProxyConfiguration(environment: local).upstreamIdleTimeout == .seconds(4))
        #expect(try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_UPSTREAM_IDLE_TIMEOUT": "0"]).upstreamIdleTimeout == .zero)
        #expect(try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_UPSTREAM_IDLE_TIMEOUT": "30s"]).upstreamIdleTimeout == .seconds(30))
        let error = #expect(throws: ConfigurationError.self) {
            try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_UPSTREAM_IDLE_TIMEOUT": "soon"])
        }
        #expect(error?.variable == "KAIZEN_UPSTREAM_IDLE_TIMEOUT")
    }

    @Test func eventLoopsAreSwiftNIOsCountUnlessSet() throws {
        #expect(try ProxyConfiguration(environment: local).eventLoops == nil)
        #expect(try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_EVENT_LOOPS": "2"]).eventLoops == 2)
        for bad in ["0", "1025", "two", "-1"] {
            let error = #expect(throws: ConfigurationError.self) {
                try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_EVENT_LOOPS": bad])
            }
            #expect(error?.variable == "KAIZEN_EVENT_LOOPS")
        }
    }

    @Test func portZeroPicksAFreePort() throws {
        #expect(try ProxyConfiguration(environment: ["PORT": "0", "KAIZEN_LOCAL": "1"]).port == 0)
    }

    @Test func everyKeyHasAFlag() {
        let variables = Set(ConfigurationKey.all.map(\.variable))
        #expect(variables.count == ConfigurationKey.all.count)
        #expect(ConfigurationKey.all.allSatisfy { $0.flag.hasPrefix("--") })
    }

    @Test func aURLIsShownWithoutItsUserInformation() {
        #expect(ProxyConfiguration.withoutUserInformation("https://kaizen:key@api.example:44x/v1") == "https://…api.example:44x/v1")
        #expect(ProxyConfiguration.withoutUserInformation("https//kaizen:key@api.example") == "…api.example")
        #expect(ProxyConfiguration.withoutUserInformation("https://a@b@api.example") == "https://…api.example")
        #expect(ProxyConfiguration.withoutUserInformation("https://api.example/v1") == "https://api.example/v1")
    }

    @Test func accessSettingsParseAndRefuseWithTheVariable() throws {
        let configuration = try ProxyConfiguration(environment: [
            "KAIZEN_LOCAL": "1", "KAIZEN_ALLOW_CLIENTS": "10.0.0.0/8, fd00::/8", "KAIZEN_ALLOW_PRIVATE": "10.1.0.0/16,[::1],internal.example,*.corp.example",
            "KAIZEN_CONNECT_PORTS": "443, 8000-8100", "KAIZEN_DENY_DESTINATIONS": "2600:1f18:4a2b::/56, [2001:db8::5], 198.51.100.0/24",
        ])
        #expect(configuration.denyDestinationRanges.map(\.description) == ["2600:1f18:4a2b::/56", "2001:db8::5/128", "198.51.100.0/24"])
        #expect(configuration.allowedClients?.map(\.description) == ["10.0.0.0/8", "fd00::/8"])
        #expect(configuration.allowPrivateRanges.map(\.description) == ["10.1.0.0/16", "::1/128"])
        #expect(configuration.allowPrivateNames == ["internal.example", "*.corp.example"])
        #expect(configuration.connectPorts == [443...443, 8000...8100])
        for (variable, value) in [
            ("KAIZEN_ALLOW_CLIENTS", "10.0.0.0/33"), ("KAIZEN_ALLOW_CLIENTS", ","), ("KAIZEN_ALLOW_PRIVATE", "not a name!"),
            ("KAIZEN_CONNECT_PORTS", "443,0"), ("KAIZEN_CONNECT_PORTS", "9-1"), ("KAIZEN_CONNECT_PORTS", "https"),
            ("KAIZEN_PROXY_AUTH", "/nonexistent/agents"), ("KAIZEN_DENY_DESTINATIONS", "internal.example"),
            ("KAIZEN_DENY_DESTINATIONS", "10.0.0.0/40"),
        ] {
            #expect {
                try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", variable: value])
            } throws: { error in
                (error as? ConfigurationError)?.variable == variable
            }
        }
    }

    @Test func exposedListenerWithoutRestrictionWarns() throws {
        func warning(_ environment: [String: String]) throws -> String? {
            ProxyServer.exposureWarning(try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1"].merging(environment) { $1 }))
        }
        #expect(try warning([:]) == nil)
        #expect(try warning(["KAIZEN_LISTEN": "::1"]) == nil)
        #expect(try warning(["KAIZEN_LISTEN": "0.0.0.0"])?.contains("KAIZEN_ALLOW_CLIENTS") == true)
        #expect(try warning(["KAIZEN_LISTEN": "::"]) != nil)
        #expect(try warning(["KAIZEN_LISTEN": "0.0.0.0", "KAIZEN_ALLOW_CLIENTS": "10.0.0.0/8"]) == nil)
    }

    @Test func docsListEveryVariableAndFlag() throws {
        // docs/configuration.md is what users read: every setting the proxy reads must be in its table.
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("docs/configuration.md")
        let text = try String(contentsOf: docs, encoding: .utf8)
        for key in ConfigurationKey.all {
            #expect(text.contains("| `\(key.variable)` | `\(key.flag)` |"), "\(key.variable) is not in docs/configuration.md")
        }
    }
}

@Suite struct AuditSettingsTests {
    @Test func theStartRecordSaysWhatIsDecrypted() throws {
        let plain = EgressApplication.auditSettings(try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1"]))
        #expect(plain.first { $0.0 == "mode" }?.1 == "destination-only")
        #expect(!plain.contains { $0.0 == "inspect_http2" })
        var environment = ["KAIZEN_LOCAL": "1", "KAIZEN_CA_CERT": "/nonexistent/ca.pem", "KAIZEN_CA_KEY": "/nonexistent/ca.key"]
        let inspecting = EgressApplication.auditSettings(try ProxyConfiguration(environment: environment))
        #expect(inspecting.first { $0.0 == "mode" }?.1 == "inspection")
        #expect(inspecting.first { $0.0 == "inspect_http2" }?.1 == "on")
        environment["KAIZEN_INSPECT_HTTP2"] = "off"
        let http1Only = EgressApplication.auditSettings(try ProxyConfiguration(environment: environment))
        #expect(http1Only.first { $0.0 == "inspect_http2" }?.1 == "off")
        #expect(http1Only.first { $0.0 == "ca_sha256" }?.1 == "unreadable")
    }

    /// The records say who could use the proxy and where it could go; by default, anyone, anywhere public.
    @Test func theRecordsSayWhoMayUseTheProxyAndWhereItMayGo() throws {
        func value(_ settings: [(String, AuditSetting)], _ key: String) -> AuditSetting? { settings.first { $0.0 == key }?.1 }
        let defaults = EgressApplication.auditSettings(try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1"]))
        #expect(value(defaults, "allow_clients") == .list(["0.0.0.0/0", "::/0"]))
        #expect(value(defaults, "proxy_auth") == "off" && value(defaults, "proxy_auth_agents") == nil)
        #expect(value(defaults, "allow_private") == .list([]) && value(defaults, "deny_destinations") == .list([]))
        #expect(value(defaults, "connect_ports") == .list(["1-65535"]))
        #expect(value(defaults, "policy") == "off" && value(defaults, "policy_fail") == nil)
        #expect(value(defaults, "listen") == "127.0.0.1:8080")
        let observing = EgressApplication.auditSettings(
            try ProxyConfiguration(environment: ["KAIZEN_API_KEY": "kz_test_secret123", "KAIZEN_LISTEN": "::", "PORT": "3128"]))
        #expect(value(observing, "policy") == "observe" && value(observing, "policy_fail") == "open")
        #expect(value(observing, "listen") == "[::]:3128")

        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kz-access-\(UInt64.random(in: 0...UInt64.max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let credentials = directory + "/agents"
        let token = "tok-\(UInt64.random(in: 0...UInt64.max))-0123456789"
        #expect(FileManager.default.createFile(
            atPath: credentials, contents: Data("research,bot:\(token)\nci:\(token)x\n".utf8), attributes: [.posixPermissions: 0o600]))
        let configured = EgressApplication.auditSettings(try ProxyConfiguration(environment: [
            "KAIZEN_API_KEY": "kz_test_secret123", "KAIZEN_ALLOW_CLIENTS": "10.1.2.3/16,fd00::/8", "KAIZEN_PROXY_AUTH": credentials,
            "KAIZEN_ALLOW_PRIVATE": "10.2.0.0/16,db.internal", "KAIZEN_DENY_DESTINATIONS": "198.51.100.0/24",
            "KAIZEN_CONNECT_PORTS": "443,9000-9100", "KAIZEN_MODE": "enforce", "KAIZEN_POLICY_FAIL": "closed",
        ]))
        // As in force: ranges normalised, agents sorted.
        #expect(value(configured, "allow_clients") == .list(["10.1.0.0/16", "fd00::/8"]))
        // A name with a comma stays one item: lists are JSON arrays.
        #expect(value(configured, "proxy_auth") == "on" && value(configured, "proxy_auth_agents") == .list(["ci", "research,bot"]))
        #expect(value(configured, "allow_private") == .list(["10.2.0.0/16", "db.internal"]))
        #expect(value(configured, "deny_destinations") == .list(["198.51.100.0/24"]))
        #expect(value(configured, "connect_ports") == .list(["443", "9000-9100"]))
        #expect(value(configured, "policy") == "enforce" && value(configured, "policy_fail") == "closed")
        let written = configured.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
        #expect(!written.contains(token) && !written.contains("kz_test_secret123"), "\(written)")
    }

    /// The start and reload records name the CA by its certificate's SHA-256, as openssl prints it.
    @Test func theCAIsNamedByItsFingerprint() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kz-ca-\(UInt64.random(in: 0...UInt64.max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let key = directory + "/ca.key", cert = directory + "/ca.pem"
        let made = try runCommand("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
            "-days", "30", "-subj", "/CN=fingerprint test",
        ])
        #expect(made.status == 0, "\(made.stderr)")
        let line = try runCommand("/usr/bin/openssl", ["x509", "-in", cert, "-noout", "-fingerprint", "-sha256"]).stdout
        let expected = line.split(separator: "=").last.map { $0.replacingOccurrences(of: ":", with: "").lowercased() }?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let settings = EgressApplication.auditSettings(
            try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_CA_CERT": cert, "KAIZEN_CA_KEY": key]))
        #expect(expected?.count == 64)
        #expect(settings.first { $0.0 == "ca_sha256" }?.1 == expected.map { .text($0) }, "\(line)")
        // A reload names the CA it loaded, whatever the file holds by then.
        let loaded = try OpenSSLCertificate.chain(pemOrDER: Array(try Data(contentsOf: URL(fileURLWithPath: cert)))).first!
        let configuration = try ProxyConfiguration(environment: ["KAIZEN_LOCAL": "1", "KAIZEN_CA_CERT": cert, "KAIZEN_CA_KEY": key])
        try FileManager.default.removeItem(atPath: cert)
        #expect(EgressApplication.auditSettings(configuration).first { $0.0 == "ca_sha256" }?.1 == "unreadable")
        #expect(EgressApplication.auditSettings(configuration, ca: loaded).first { $0.0 == "ca_sha256" }?.1 == expected.map { .text($0) })
    }
}

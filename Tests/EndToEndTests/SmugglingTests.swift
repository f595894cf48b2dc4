import Foundation
import TestSupport
import Testing

/// The request-smuggling corpus (smuggling_client.py, 172 cases) through the proxy to a strict origin that
/// records what reaches it (smuggling_origin.py), in plain HTTP and inside an inspected TLS connection. For every
/// case the proxy either refuses, or forwards exactly the requests it reports; and the origin never receives a
/// byte its strict parser would refuse.
@Suite(.serialized) struct SmugglingTests {
    static let client = Paths.endToEndDirectory.appendingPathComponent("smuggling_client.py").path
    static let originScript = Paths.endToEndDirectory.appendingPathComponent("smuggling_origin.py").path

    struct Received: Hashable {
        var method: String
        var target: String
        var body: Int
    }

    func json(_ line: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]) ?? [:]
    }

    /// Runs the corpus; returns the origin (still running: its records may still be on their way), the proxy's
    /// stdout lines and the client's results.
    func run(mitm: Bool) throws -> (origin: ChildProcess, proxy: [[String: Any]], cases: [[String: Any]]) {
        let count = try #require(Int(try runCommand(Paths.which("python3"), [Self.client, "--proxy", "1", "--ports", "1", "--count"]).stdout))
        #expect(count >= 100)
        let pki = try TestPKI.mint()
        var originArguments = [Self.originScript, "--ports", "\(count + 1)"]
        if mitm { originArguments += ["--cert", pki.serverCertificate, "--key", pki.serverKey] }
        let origin = try ChildProcess(Paths.which("python3"), originArguments)
        let ports = try origin.waitForLine(timeout: 20) { $0.hasPrefix("PORTS ") }.dropFirst(6).split(separator: " ").map(String.init)

        var environment: [String: String] = [:]
        var clientArguments = [Self.client, "--proxy", "", "--ports", ports.joined(separator: ",")]
        if mitm {
            let ca = try InspectionTests.makeCA(in: pki.directory)
            environment["KAIZEN_CA_CERT"] = ca + "/ca.pem"
            environment["KAIZEN_CA_KEY"] = ca + "/ca.key"
            environment["KAIZEN_UPSTREAM_CA_FILE"] = pki.caCertificate
            clientArguments += ["--mitm", "--ca", ca + "/ca.pem"]
        }
        let proxy = try ChildProcess(Paths.proxyBinary, ["--local", "--port", "0"], environment: ProxyEnvironment.make(environment))
        let port = try proxy.listeningPort()
        clientArguments[2] = "\(port)"

        let result = try runCommand(Paths.which("python3"), clientArguments, timeout: 300)
        #expect(result.status == 0, "\(result.stderr)")
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
        let cases = result.stdout.split(separator: "\n").map { json(String($0)) }
        #expect(cases.count == count)
        return (origin, proxy.stdoutLines.map(json), cases)
    }

    func check(mitm: Bool) throws {
        let (originProcess, proxy, cases) = try run(mitm: mitm)
        // What the proxy reported as forwarded, per origin port.
        var reported: [Int: [Received]] = [:]
        var bodies: [String: Int] = [:]  // plain HTTP: event id → request body bytes, from the close records
        for line in proxy {
            if let close = line["close"] as? [String: Any], let id = close["event_id"] as? String {
                bodies[id] = close["bytes_from_client"] as? Int
            }
        }
        for line in proxy {
            guard let action = line["action"] as? [String: Any], let metadata = action["metadata"] as? [String: Any],
                metadata["outcome"] as? String == "connected", let port = metadata["port"] as? Int
            else { continue }
            if mitm {
                guard metadata["intercepted"] as? Bool == true, !((metadata["error"] as? String)?.hasPrefix("rejected") ?? false),
                    let method = metadata["method"] as? String
                else { continue }
                reported[port, default: []].append(
                    Received(method: method, target: metadata["path"] as? String ?? "", body: metadata["request_body_bytes"] as? Int ?? -1))
            } else {
                // Destination-only mode reports no method or path: the count and body sizes must match.
                let id = metadata["event_id"] as? String ?? ""
                reported[port, default: []].append(Received(method: "", target: "", body: bodies[id] ?? -1))
            }
        }
        // The origin prints a record before it answers, but this process reads its output on a thread of its own:
        // on a loaded machine the last records can still be in the pipe. Wait (bounded) until every port the proxy
        // reported a request to has as many records; one that gets fewer fails the comparison below.
        let wanted = reported.mapValues(\.count)
        try? originProcess.waitUntil(timeout: 30) { lines in
            var seen: [Int: Int] = [:]
            for line in lines where line.hasPrefix("{") {
                if let port = json(line)["port"] as? Int { seen[port, default: 0] += 1 }
            }
            return wanted.allSatisfy { seen[$0.key, default: 0] >= $0.value }
        }
        let origin = originProcess.stdoutLines.filter { $0.hasPrefix("{") }.map(json)
        // Nothing ambiguous ever reached the origin.
        let refusedByOrigin = origin.filter { $0["error"] != nil }
        #expect(refusedByOrigin.isEmpty, "the origin refused what the proxy forwarded: \(refusedByOrigin.prefix(3))")

        var received: [Int: [Received]] = [:]
        for record in origin where record["error"] == nil {
            let port = record["port"] as? Int ?? -1
            received[port, default: []].append(
                Received(method: record["method"] as? String ?? "", target: record["target"] as? String ?? "", body: record["body"] as? Int ?? -1))
        }
        var refused = 0
        var forwarded = 0
        var names: [Int: String] = [:]
        for result in cases { if let port = result["port"] as? Int { names[port] = result["name"] as? String } }
        for ports in Set(received.keys).union(reported.keys) {
            var origins = received[ports] ?? []
            if !mitm { origins = origins.map { Received(method: "", target: "", body: $0.body) } }
            let sortedOrigin = origins.sorted { ($0.method, $0.target, $0.body) < ($1.method, $1.target, $1.body) }
            let sortedReported = (reported[ports] ?? []).sorted { ($0.method, $0.target, $0.body) < ($1.method, $1.target, $1.body) }
            #expect(
                sortedOrigin == sortedReported,
                "case \(names[ports] ?? "second host"): origin received \(sortedOrigin), proxy reported \(sortedReported); actions: \(proxy.filter { (($0["action"] as? [String: Any])?["metadata"] as? [String: Any])?["port"] as? Int == ports }.map { ($0["action"] as? [String: Any])?["metadata"] ?? [:] })"
            )
        }
        for result in cases {
            let port = result["port"] as? Int ?? -1
            let statuses = result["statuses"] as? [Int] ?? []
            if received[port]?.isEmpty ?? true {
                refused += 1
                // Nothing forwarded: the client was told no (or the connection simply ended).
                #expect(statuses.allSatisfy { $0 >= 400 } || statuses.isEmpty, "\(result)")
            } else {
                forwarded += 1
            }
        }
        print("smuggling corpus (\(mitm ? "inspected" : "plain HTTP")): \(cases.count) cases, \(refused) refused, \(forwarded) forwarded as reported")
    }

    @Test func plainHTTP() throws {
        try check(mitm: false)
    }

    @Test func insideInspection() throws {
        try check(mitm: true)
    }
}

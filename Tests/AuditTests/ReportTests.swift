@testable import Audit
import ControlPlane
import Foundation
import Testing

/// The report's arithmetic on a log with known records, its period and agent filters, and hostile names in
/// every output form.
@Suite struct ReportTests {
    static func action(
        _ agent: String, _ target: String, at: String, outcome: ConnectMetadata.Outcome = .connected,
        verdict: ConnectAction.Verdict = .observed, _ configure: (inout ConnectMetadata) -> Void = { _ in }
    ) -> (ActionRecord, EventID) {
        let id = EventID.generate()
        var metadata = ConnectMetadata(
            eventID: id, transport: .connect, host: String(target.split(separator: ":")[0]), port: 443,
            client: "127.0.0.1:1", startedAt: at, outcome: outcome
        )
        configure(&metadata)
        return (.action(ConnectAction(agent: agent, target: target, metadata: metadata, verdict: verdict)), id)
    }

    static func close(_ agent: String, _ id: EventID, _ target: String, at: String, out: UInt64, back: UInt64) -> ActionRecord {
        .close(CloseRecord(agent: agent, close: .init(
            eventID: id, target: target, bytesFromClient: out, bytesToClient: back, durationMs: 5, closedBy: .client,
            reason: "eof", endedAt: at)))
    }

    static func write(_ records: [ActionRecord]) throws -> String {
        let directory = NSTemporaryDirectory() + "report-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var writer = try AuditFileWriter(paths: AuditPaths(current: directory + "/audit.jsonl"), maxBytes: 0)
        try writer.append(records.map { record in
            var json = JSONWriter()
            switch record {
            case .action(let action): action.writeJSON(to: &json)
            case .close(let close): close.writeJSON(to: &json)
            }
            return json.take()
        })
        try writer.sync(now: "2026-11-26T00:00:00.000Z")
        return directory + "/audit.jsonl"
    }

    static let hostile = "evil\"<b>,=cmd\u{7}\n.example:443"

    static func sampleLog() throws -> String {
        var records: [ActionRecord] = []
        // Day 1: agent a reaches api.example twice (the first flagged new), fails once to down.example.
        let (first, firstID) = action("a", "api.example:443", at: "2026-11-20T10:00:00.000Z") { $0.firstSeen = true }
        records += [first, close("a", firstID, "api.example:443", at: "2026-11-20T10:00:01.000Z", out: 100, back: 1000)]
        let (second, secondID) = action("a", "api.example:443", at: "2026-11-20T11:00:00.000Z")
        records += [second, close("a", secondID, "api.example:443", at: "2026-11-20T11:00:01.000Z", out: 50, back: 500)]
        records.append(action("a", "down.example:443", at: "2026-11-20T12:00:00.000Z", outcome: .failed) { $0.error = "connection refused" }.0)
        // Day 3: an inspected connection with three requests, and an interception failure.
        let (request1, connection) = action("a", "llm.example:443", at: "2026-11-22T09:00:00.000Z") {
            $0.intercepted = true; $0.method = "POST"; $0.path = "/v1/chat"
        }
        records.append(request1)
        for path in ["/v1/chat", "/v1/models"] {
            records.append(action("a", "llm.example:443", at: "2026-11-22T09:00:01.000Z") {
                $0.intercepted = true; $0.method = path == "/v1/chat" ? "POST" : "GET"; $0.path = path
                $0.connectionID = connection
                if path == "/v1/models" { $0.requestHost = "other.example" }  // named another host
            }.0)
        }
        // A request the proxy refused (enforce mode): listed apart, never as one that reached the destination.
        records.append(action("a", "llm.example:443", at: "2026-11-22T09:00:01.500Z", verdict: .init(decision: "block", reason: "no-chat")) {
            $0.intercepted = true; $0.method = "POST"; $0.path = "/v1/chat"; $0.connectionID = connection
            $0.policy = "no-chat"; $0.status = 403; $0.error = "destination blocked by policy no-chat"
        }.0)
        records.append(close("a", connection, "llm.example:443", at: "2026-11-22T09:00:02.000Z", out: 3000, back: 9000))
        let (failed, failedID) = action("a", "pinned.example:443", at: "2026-11-22T10:00:00.000Z") {
            $0.intercepted = false; $0.inspection = "upstream not trusted"; $0.error = "certificate has expired"
        }
        records += [failed, close("a", failedID, "pinned.example:443", at: "2026-11-22T10:00:00.500Z", out: 300, back: 0)]
        // Agent b, with a hostile name.
        let (other, otherID) = action("b", hostile, at: "2026-11-22T12:00:00.000Z") { $0.firstSeen = true }
        records += [other, close("b", otherID, hostile, at: "2026-11-22T12:00:05.000Z", out: 7, back: 8)]
        return try write(records)
    }

    @Test func figuresAddUp() throws {
        let report = try AuditReportBuilder().build(files: [try Self.sampleLog()], now: "2026-11-23T00:00:00.000Z")
        #expect(report.chain.intact && report.chain.lines == 14)
        #expect(report.agents.map(\.agent) == ["a", "b"])
        let a = report.agents[0]
        #expect(a.connections == 4 && a.failedConnections == 1)
        #expect(a.bytesFromClient == 100 + 50 + 3000 + 300 && a.bytesToClient == 1000 + 500 + 9000)
        let api = try #require(a.destinations.first { $0.target == "api.example:443" })
        #expect(api.connections == 2 && api.new && !api.inspected)
        #expect(api.firstSeen == "2026-11-20T10:00:00.000Z" && api.lastSeen == "2026-11-20T11:00:00.000Z")
        let llm = try #require(a.destinations.first { $0.target == "llm.example:443" })
        #expect(llm.connections == 1 && llm.inspected && !llm.new)
        #expect(llm.requests == [
            .init(method: "POST", path: "/v1/chat", count: 2, refused: false),
            .init(method: "GET", path: "https://other.example/v1/models", count: 1, refused: false),
            .init(method: "POST", path: "/v1/chat", count: 1, refused: true),
        ])
        #expect(a.newDestinations == [.init(target: "api.example:443", at: "2026-11-20T10:00:00.000Z")])
        #expect(a.failures == [.init(target: "down.example:443", reason: "connection refused", count: 1, lastSeen: "2026-11-20T12:00:00.000Z")])
        #expect(a.interceptionFailures.map(\.reason) == ["upstream not trusted: certificate has expired"])
        #expect(a.daily.map(\.day) == ["2026-11-20", "2026-11-22"])
        #expect(a.daily.map(\.connections) == [2, 2])
        // The chart fills the day without records.
        #expect(HTMLRenderer.filledDays(a.daily).map(\.connections) == [2, 0, 2])
    }

    @Test func periodAndAgentFilters() throws {
        let log = try Self.sampleLog()
        let recent = try AuditReportBuilder(since: "2026-11-21T00:00:00.000Z").build(files: [log], now: "x")
        let a = try #require(recent.agents.first { $0.agent == "a" })
        #expect(a.connections == 2 && a.failedConnections == 0 && a.newDestinations.isEmpty)
        #expect(!a.destinations.contains { $0.target == "api.example:443" })
        let onlyB = try AuditReportBuilder(agent: "b").build(files: [log], now: "x")
        #expect(onlyB.agents.map(\.agent) == ["b"])
    }

    /// A request the proxy rejected before a method or path was read (a malformed request line) has neither, but
    /// it was refused all the same: it is listed, with its status and reason, and marked refused in every form.
    @Test func requestsRejectedBeforeTheirMethodAreListed() throws {
        let (connection, id) = Self.action("a", "llm.example:443", at: "2026-11-22T09:00:00.000Z") {
            $0.intercepted = true; $0.method = "GET"; $0.path = "/"
        }
        let rejected = Self.action("a", "llm.example:443", at: "2026-11-22T09:00:01.000Z") {
            $0.intercepted = true; $0.connectionID = id; $0.status = 400
            $0.error = "rejected: malformed request: invalid header name"
        }.0
        let report = try AuditReportBuilder().build(files: [try Self.write([connection, rejected])], now: "2026-11-23T00:00:00.000Z")
        let llm = try #require(report.agents.first?.destinations.first)
        #expect(llm.rejectedUnread == [.init(status: 400, reason: "rejected: malformed request: invalid header name", count: 1)])
        #expect(llm.requests == [.init(method: "GET", path: "/", count: 1, refused: false)])
        let listed = "request with no method or path read: 400, rejected: malformed request: invalid header name"
        #expect(try ReportFormat.table.render(report).contains("      1× \(listed) (refused by the proxy)\n"))
        #expect(try ReportFormat.csv.render(report).contains("GET / (1); \(listed) (1, refused)"))
        #expect(try ReportFormat.html.render(report).contains("<li>1× \(listed) <strong>refused by the proxy</strong></li>"))
        let json = try ReportFormat.json.render(report)
        #expect(json.contains("\"rejected_unread\"") && json.contains("invalid header name"))
    }

    @Test func hostileNamesCannotBreakAnyForm() throws {
        let report = try AuditReportBuilder().build(files: [try Self.sampleLog()], now: "2026-11-23T00:00:00.000Z")
        let html = try ReportFormat.html.render(report)
        #expect(!html.contains("<b>") && html.contains("evil&quot;&lt;b&gt;,=cmd\\u{7}\\u{a}.example:443"))
        let csv = try ReportFormat.csv.render(report)
        let rows = csv.components(separatedBy: "\r\n").filter { !$0.isEmpty }
        #expect(rows.count == 1 + 5)  // header; a: three destinations and one that only failed; b: one
        #expect(csv.contains("\"evil\"\"<b>,=cmd\u{7}\n.example:443\""))  // quoted whole, quotes doubled
        #expect(CSVRenderer.cell("=1+2") == "'=1+2" && CSVRenderer.cell("-x") == "'-x")
        let table = try ReportFormat.table.render(report)
        #expect(!table.contains("\u{7}") && table.contains("evil\"<b>,=cmd\\u{7}\\u{a}.example:443"))
        let json = try ReportFormat.json.render(report)
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let decoded = try decoder.decode(AuditReport.self, from: Data(json.utf8))
        #expect(json.contains("\"bytes_from_client\"") && json.contains("\"requests_not_listed\""))
        #expect(decoded == report)
        // A refused request says so in every form.
        #expect(table.contains("1× POST /v1/chat (refused by the proxy)"), "\(table)")
        #expect(html.contains("refused by the proxy") && csv.contains("POST /v1/chat (1, refused)") && json.contains("\"refused\" : true"))
    }
}

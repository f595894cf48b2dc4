import Foundation

/// The report's four forms: a text table for a terminal, JSON and CSV for tools, and one self-contained HTML page
/// (inline styles and an inline SVG chart, no scripts or external assets) a reviewer can open offline.
public enum ReportFormat: String, CaseIterable, Sendable {
    case table, json, csv, html

    public func render(_ report: AuditReport) throws -> String {
        switch self {
        case .table: TableRenderer.render(report)
        case .json: try JSONRenderer.render(report)
        case .csv: CSVRenderer.render(report)
        case .html: HTMLRenderer.render(report)
        }
    }
}

/// `1.2 MB`, `532 B`: decimal units, as reviewers read them.
func humanBytes(_ bytes: UInt64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1000 && unit < units.count - 1 {
        value /= 1000
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}

/// `1 destination`, `2 destinations`.
func plural(_ count: Int, _ noun: String) -> String {
    "\(count) \(noun)\(count == 1 ? "" : "s")"
}

/// Control characters shown as `\u{…}` so a hostile host name cannot break a terminal line or a CSV row.
func visible(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f || $0.value == 0x2028 || $0.value == 0x2029 })
    else { return text }
    var out = ""
    for scalar in text.unicodeScalars {
        if scalar.value < 0x20 || scalar.value == 0x7f || scalar.value == 0x2028 || scalar.value == 0x2029 {
            out += "\\u{\(String(scalar.value, radix: 16))}"
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    return out
}

/// A request refused before its method and path were read, by what is known of it.
func unreadRequest(_ request: AuditReport.RejectedRequest) -> String {
    "request with no method or path read: \(request.status.map { "\($0), " } ?? "")\(request.reason)"
}

private func chainLine(_ chain: AuditReport.ChainStatus) -> String {
    if chain.intact {
        let range = chain.firstSeq.map { "seq \($0)–\(chain.lastSeq ?? $0)" } ?? "no lines"
        let end = AuditVerifier.Report.endSummary(
            headChecked: chain.headChecked, confirmedThrough: chain.confirmedThrough, lastSequence: chain.lastSeq)
        return "intact (\(chain.lines) lines, \(range)\(end))"
    }
    return "BROKEN: \(visible(chain.failure ?? "unknown"))"
}

enum TableRenderer {
    static func render(_ report: AuditReport) -> String {
        var out = "Kaizen egress report, generated \(report.generatedAt)\n"
        out += "Period: \(report.since.map { "since \($0)" } ?? "everything in the files")"
        out += report.agentFilter.map { ", agent \(visible($0))" } ?? ""
        out += "\nFiles: \(report.files.joined(separator: ", "))\n"
        out += "Chain: \(chainLine(report.chain))\n"
        for note in report.chain.notes { out += "  note: \(visible(note))\n" }
        if report.agents.isEmpty { out += "\nNo records in the period.\n" }
        for agent in report.agents {
            out += "\nAgent \(visible(agent.agent)): \(plural(agent.connections, "connection")) to \(plural(agent.destinations.count, "destination")), "
            out += "\(agent.failedConnections) failed, \(humanBytes(agent.bytesFromClient)) sent, \(humanBytes(agent.bytesToClient)) received\n\n"
            var rows = [["DESTINATION", "FIRST SEEN", "LAST SEEN", "CONNS", "SENT", "RECEIVED", "INSPECTED", "NEW"]]
            for d in agent.destinations {
                rows.append([
                    visible(d.target), d.firstSeen, d.lastSeen, "\(d.connections)", humanBytes(d.bytesFromClient),
                    humanBytes(d.bytesToClient), d.inspected ? "yes" : "no", d.new ? "new" : "",
                ])
            }
            out += columns(rows)
            let inspected = agent.destinations.filter { !$0.requests.isEmpty || !$0.rejectedUnread.isEmpty }
            if !inspected.isEmpty {
                out += "\n  Requests (inspected destinations):\n"
                for d in inspected {
                    out += "    \(visible(d.target))\n"
                    for r in d.requests {
                        out += "      \(r.count)× \(visible(r.method)) \(visible(r.path))\(r.refused ? " (refused by the proxy)" : "")\n"
                    }
                    if d.requestsNotListed > 0 { out += "      … and \(d.requestsNotListed) more distinct requests\n" }
                    for r in d.rejectedUnread { out += "      \(r.count)× \(visible(unreadRequest(r))) (refused by the proxy)\n" }
                }
            }
            out += "\n  New destinations in the period: \(agent.newDestinations.isEmpty ? "none" : "")\n"
            for n in agent.newDestinations { out += "    \(n.at)  \(visible(n.target))\n" }
            out += "\n  Failed connections: \(agent.failures.isEmpty ? "none" : "")\n"
            for f in agent.failures { out += "    \(f.count)× \(visible(f.target)): \(visible(f.reason)) (last \(f.lastSeen))\n" }
            out += "\n  Interception failures: \(agent.interceptionFailures.isEmpty ? "none" : "")\n"
            for f in agent.interceptionFailures {
                out += "    \(f.count)× \(visible(f.target)): \(visible(f.reason)) (last \(f.lastSeen))\n"
            }
            out += "\n  Per day (UTC):\n"
            for day in agent.daily {
                out += "    \(day.day)  \(day.connections) connections, \(humanBytes(day.bytesFromClient)) sent, \(humanBytes(day.bytesToClient)) received\n"
            }
        }
        return out
    }

    static func columns(_ rows: [[String]]) -> String {
        var widths = [Int](repeating: 0, count: rows.first?.count ?? 0)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        return rows.map { row in
            "  " + row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count)
            }.joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
    }
}

enum JSONRenderer {
    static func render(_ report: AuditReport) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return String(decoding: try encoder.encode(report), as: UTF8.self) + "\n"
    }
}

/// One row per agent and destination (RFC 4180 quoting). Cells that a spreadsheet would run as a formula
/// (`=`, `+`, `-`, `@` first) get a leading `'`.
enum CSVRenderer {
    static func render(_ report: AuditReport) -> String {
        var out = "agent,destination,first_seen,last_seen,connections,bytes_from_client,bytes_to_client,inspected,new,failed_connections,requests\r\n"
        for agent in report.agents {
            var failed: [String: Int] = [:]
            for f in agent.failures { failed[f.target, default: 0] += f.count }
            var targets = agent.destinations.map(\.target)
            targets += failed.keys.filter { key in !agent.destinations.contains { $0.target == key } }.sorted()
            for target in targets {
                let d = agent.destinations.first { $0.target == target }
                let requests = ((d?.requests.map { "\($0.method) \($0.path) (\($0.count)\($0.refused ? ", refused" : ""))" } ?? [])
                    + (d?.rejectedUnread.map { "\(unreadRequest($0)) (\($0.count), refused)" } ?? [])).joined(separator: "; ")
                let cells: [String] = [
                    agent.agent, target, d?.firstSeen ?? "", d?.lastSeen ?? "", "\(d?.connections ?? 0)",
                    "\(d?.bytesFromClient ?? 0)", "\(d?.bytesToClient ?? 0)", d?.inspected == true ? "true" : "false",
                    d?.new == true ? "true" : "false", "\(failed[target] ?? 0)", requests,
                ]
                out += cells.map(cell).joined(separator: ",") + "\r\n"
            }
        }
        return out
    }

    static func cell(_ value: String) -> String {
        var text = value
        if let first = text.first, "=+-@\t\r".contains(first) { text = "'" + text }
        guard text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return text }
        return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}

enum HTMLRenderer {
    static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.count)
        for scalar in visible(text).unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    static func render(_ report: AuditReport) -> String {
        var html = """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
            <title>Kaizen egress report</title>
            <style>
            body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#1b1f24}
            h1{font-size:1.5em;margin-bottom:.2em} h2{margin-top:2em;border-bottom:2px solid #d0d7de;padding-bottom:.2em} h3{margin-top:1.5em}
            table{border-collapse:collapse;width:100%;margin:.5em 0} th,td{border:1px solid #d0d7de;padding:.3em .5em;text-align:left;vertical-align:top}
            th{background:#f6f8fa} td.n{text-align:right;font-variant-numeric:tabular-nums} code{font-size:.95em;word-break:break-all}
            .ok{background:#dafbe1;border:1px solid #4ac26b;padding:.6em 1em;border-radius:6px}
            .bad{background:#ffebe9;border:1px solid #ff8182;padding:.6em 1em;border-radius:6px}
            .tag{display:inline-block;padding:0 .4em;border-radius:4px;font-size:.85em;background:#ddf4ff;border:1px solid #54aeff}
            .new{background:#fff8c5;border-color:#d4a72c} .muted{color:#57606a} ul{margin:.3em 0}
            </style></head><body>

            """
        html += "<h1>Kaizen egress report</h1>\n"
        html += "<p class=\"muted\">Generated \(escape(report.generatedAt)) · period: "
        html += report.since.map { "since " + escape($0) } ?? "everything in the files"
        html += report.agentFilter.map { " · agent " + escape($0) } ?? ""
        html += "</p>\n"
        html += "<div class=\"\(report.chain.intact ? "ok" : "bad")\"><strong>Audit chain: </strong>\(escape(chainLine(report.chain)))"
        if !report.chain.notes.isEmpty {
            html += "<ul>" + report.chain.notes.map { "<li>\(escape($0))</li>" }.joined() + "</ul>"
        }
        html += "<div class=\"muted\">Files: " + report.files.map { "<code>\(escape($0))</code>" }.joined(separator: ", ") + "</div></div>\n"
        if report.agents.isEmpty { html += "<p>No records in the period.</p>\n" }
        for agent in report.agents {
            html += "<h2>Agent <code>\(escape(agent.agent))</code></h2>\n"
            html += "<p>\(plural(agent.connections, "connection")) to \(plural(agent.destinations.count, "destination")) · \(agent.failedConnections) failed · "
            html += "\(humanBytes(agent.bytesFromClient)) sent · \(humanBytes(agent.bytesToClient)) received</p>\n"
            html += "<h3>Connections per day (UTC)</h3>\n" + chart(agent.daily) + "\n"
            html += "<h3>Destinations</h3>\n<table><tr><th>Destination</th><th>First seen</th><th>Last seen</th><th>Connections</th>"
            html += "<th>Sent</th><th>Received</th><th>Inspected</th></tr>\n"
            for d in agent.destinations {
                html += "<tr><td><code>\(escape(d.target))</code>\(d.new ? " <span class=\"tag new\">new</span>" : "")</td>"
                html += "<td>\(escape(d.firstSeen))</td><td>\(escape(d.lastSeen))</td><td class=\"n\">\(d.connections)</td>"
                html += "<td class=\"n\">\(humanBytes(d.bytesFromClient))</td><td class=\"n\">\(humanBytes(d.bytesToClient))</td>"
                html += "<td>\(d.inspected ? "<span class=\"tag\">inspected</span>" : "destination only")</td></tr>\n"
                if !d.requests.isEmpty || !d.rejectedUnread.isEmpty {
                    html += "<tr><td colspan=\"7\"><ul>"
                    html += d.requests.map {
                        "<li>\($0.count)× <code>\(escape($0.method)) \(escape($0.path))</code>\($0.refused ? " <strong>refused by the proxy</strong>" : "")</li>"
                    }.joined()
                    if d.requestsNotListed > 0 { html += "<li class=\"muted\">… and \(d.requestsNotListed) more distinct requests</li>" }
                    html += d.rejectedUnread.map {
                        "<li>\($0.count)× \(escape(unreadRequest($0))) <strong>refused by the proxy</strong></li>"
                    }.joined()
                    html += "</ul></td></tr>\n"
                }
            }
            html += "</table>\n"
            html += "<h3>New destinations in the period</h3>\n"
            html += agent.newDestinations.isEmpty
                ? "<p class=\"muted\">None.</p>\n"
                : "<table><tr><th>First connection</th><th>Destination</th></tr>"
                    + agent.newDestinations.map { "<tr><td>\(escape($0.at))</td><td><code>\(escape($0.target))</code></td></tr>" }.joined()
                    + "</table>\n"
            html += failureTable("Failed connections", agent.failures)
            html += failureTable("Interception failures", agent.interceptionFailures)
        }
        html += "</body></html>\n"
        return html
    }

    static func failureTable(_ title: String, _ failures: [AuditReport.FailureSummary]) -> String {
        var html = "<h3>\(title)</h3>\n"
        guard !failures.isEmpty else { return html + "<p class=\"muted\">None.</p>\n" }
        html += "<table><tr><th>Destination</th><th>Reason</th><th>Count</th><th>Last</th></tr>"
        for f in failures {
            html += "<tr><td><code>\(escape(f.target))</code></td><td>\(escape(f.reason))</td><td class=\"n\">\(f.count)</td><td>\(escape(f.lastSeen))</td></tr>"
        }
        return html + "</table>\n"
    }

    /// A bar chart of connections per day as inline SVG; days without records in between show as empty bars.
    static func chart(_ daily: [AuditReport.DailyVolume]) -> String {
        let days = filledDays(daily)
        guard !days.isEmpty else { return "<p class=\"muted\">No connections.</p>" }
        let peak = max(1, days.map(\.connections).max() ?? 1)
        let width = 760.0, height = 220.0, left = 48.0, bottom = 40.0, top = 14.0
        let slot = min(64, (width - left - 10) / Double(days.count))
        let bar = max(2, slot * 0.7)
        var svg = "<svg role=\"img\" aria-label=\"Connections per day\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\">"
        svg += "<line x1=\"\(left)\" y1=\"\(height - bottom)\" x2=\"\(width - 5)\" y2=\"\(height - bottom)\" stroke=\"#57606a\"/>"
        svg += "<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\"\(height - bottom)\" stroke=\"#57606a\"/>"
        svg += "<text x=\"\(left - 6)\" y=\"\(top + 4)\" font-size=\"11\" text-anchor=\"end\" fill=\"#57606a\">\(peak)</text>"
        svg += "<text x=\"\(left - 6)\" y=\"\(height - bottom)\" font-size=\"11\" text-anchor=\"end\" fill=\"#57606a\">0</text>"
        let labelEvery = max(1, days.count / 10)
        for (index, day) in days.enumerated() {
            let h = (height - bottom - top) * Double(day.connections) / Double(peak)
            let x = left + Double(index) * slot + (slot - bar) / 2
            svg += "<rect x=\"\(fmt(x))\" y=\"\(fmt(height - bottom - h))\" width=\"\(fmt(bar))\" height=\"\(fmt(h))\" fill=\"#0969da\">"
            svg += "<title>\(day.day): \(day.connections) connections</title></rect>"
            if index % labelEvery == 0 {
                svg += "<text x=\"\(fmt(x + bar / 2))\" y=\"\(height - bottom + 16)\" font-size=\"11\" text-anchor=\"middle\" fill=\"#57606a\">\(day.day.dropFirst(5))</text>"
            }
        }
        svg += "</svg>"
        return svg
    }

    private static func fmt(_ value: Double) -> String { String(format: "%.1f", value) }

    /// The days from the first to the last with data, at most 400, missing ones as zero.
    static func filledDays(_ daily: [AuditReport.DailyVolume]) -> [AuditReport.DailyVolume] {
        guard let first = daily.first, let last = daily.last else { return [] }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd"
        guard var date = formatter.date(from: first.day), let end = formatter.date(from: last.day) else { return daily }
        let byDay = Dictionary(daily.map { ($0.day, $0) }, uniquingKeysWith: { a, _ in a })
        var out: [AuditReport.DailyVolume] = []
        while date <= end && out.count < 400 {
            let day = formatter.string(from: date)
            out.append(byDay[day] ?? .init(day: day, connections: 0, bytesFromClient: 0, bytesToClient: 0))
            date += 86_400
        }
        return out
    }
}

import ControlPlane
import Foundation

/// What an agent reached, from audit log files: `kaizen-egress report`.
///
/// Per agent and destination (`host:port`): the first and last connection in the period, connections, bytes each
/// way, whether it was inspected and, when it was, the methods and paths requested. Then the destinations that
/// were new for the agent (the proxy's `first_seen` mark), failed connections and interception failures, and the
/// connections per day. The chain is verified first and its status is part of the report.
/// JSON keys are the property names in snake_case (`first_seen`, `bytes_from_client`): `ReportFormat.json`
/// encodes with `.convertToSnakeCase`.
public struct AuditReport: Sendable, Codable, Hashable {
    public var generatedAt: String
    /// Records before this instant are left out (RFC 3339), nil for all.
    public var since: String?
    public var agentFilter: String?
    public var files: [String]
    public var chain: ChainStatus
    public var agents: [AgentSummary]

    public struct ChainStatus: Sendable, Codable, Hashable {
        public var intact: Bool
        public var lines: Int
        public var firstSeq: UInt64?
        public var lastSeq: UInt64?
        public var headChecked: Bool
        /// The seq the head file confirmed; lines after it (`last_seq` beyond it) are not confirmed by it.
        public var confirmedThrough: UInt64?
        public var failure: String?
        public var notes: [String]
    }

    public struct AgentSummary: Sendable, Codable, Hashable {
        public var agent: String
        public var connections: Int
        public var failedConnections: Int
        public var bytesFromClient: UInt64
        public var bytesToClient: UInt64
        public var destinations: [DestinationSummary]
        public var newDestinations: [NewDestination]
        public var failures: [FailureSummary]
        public var interceptionFailures: [FailureSummary]
        public var daily: [DailyVolume]
    }

    public struct DestinationSummary: Sendable, Codable, Hashable {
        public var target: String
        public var firstSeen: String
        public var lastSeen: String
        public var connections: Int
        /// Bytes of the connections that ended in the period (close records).
        public var bytesFromClient: UInt64
        public var bytesToClient: UInt64
        public var inspected: Bool
        /// The agent's first connection to it ever fell in the period.
        public var new: Bool
        /// Inspected destinations only: method and path (query removed unless the proxy was set to keep it); a
        /// request that named another host than the destination's has `https://host/path` as its path.
        public var requests: [RequestSummary]
        /// Distinct requests beyond the listed ones.
        public var requestsNotListed: Int
        /// Requests the proxy refused before their method and path were read (a malformed request line): listed
        /// apart, with what is known, by status and reason.
        public var rejectedUnread: [RejectedRequest]
    }

    public struct RejectedRequest: Sendable, Codable, Hashable {
        public var status: Int?
        /// `rejected: malformed request: …`, as the action's `metadata.error` says.
        public var reason: String
        public var count: Int
    }

    public struct RequestSummary: Sendable, Codable, Hashable {
        public var method: String
        public var path: String
        public var count: Int
        /// The proxy refused these (blocked by a policy in enforce mode, or rejected as malformed): they never reached
        /// the destination. Listed apart from the same method and path forwarded.
        public var refused: Bool
    }

    public struct NewDestination: Sendable, Codable, Hashable {
        public var target: String
        public var at: String
    }

    public struct FailureSummary: Sendable, Codable, Hashable {
        public var target: String
        public var reason: String
        public var count: Int
        public var lastSeen: String
    }

    public struct DailyVolume: Sendable, Codable, Hashable {
        /// `2026-11-26` (UTC).
        public var day: String
        public var connections: Int
        public var bytesFromClient: UInt64
        public var bytesToClient: UInt64
    }


    /// Distinct requests listed per destination at most.
    public static let requestsListed = 200
}

/// One line of the audit log, as the report reads it.
struct AuditLine: Decodable {
    var agent: String?
    var action: ConnectAction.Body?
    var verdict: ConnectAction.Verdict?
    var close: CloseRecord.Body?
}

/// Reads audit files and adds up what they hold.
public struct AuditReportBuilder {
    public var since: String?
    public var agent: String?

    public init(since: String? = nil, agent: String? = nil) {
        self.since = since
        self.agent = agent
    }

    private struct DestinationTotals {
        var firstSeen: String?
        var lastSeen: String?
        var connections = 0
        var bytesFromClient: UInt64 = 0
        var bytesToClient: UInt64 = 0
        var inspected = false
        var new = false
        var requests: [String: (method: String, path: String, count: Int, refused: Bool)] = [:]
        var requestsNotListed = Set<String>()
        var rejectedUnread: [String: AuditReport.RejectedRequest] = [:]
    }

    private struct AgentTotals {
        var destinations: [String: DestinationTotals] = [:]
        var newDestinations: [AuditReport.NewDestination] = []
        var failures: [String: AuditReport.FailureSummary] = [:]
        var interceptionFailures: [String: AuditReport.FailureSummary] = [:]
        var daily: [String: AuditReport.DailyVolume] = [:]
        var connections = 0
        var failedConnections = 0
    }

    /// Verifies the files' chain, then reads every record in them.
    public func build(files: [String], now: String, allowContinuation: Bool = false) throws -> AuditReport {
        let verification = try AuditVerifier(allowContinuation: allowContinuation).verify(files: files)
        var agents: [String: AgentTotals] = [:]
        let decoder = JSONDecoder()
        for path in verification.files {
            let data = try AuditReadError.read(path)
            for line in data.split(separator: UInt8(ascii: "\n")) {
                // A damaged line is reported by the chain status; the rest still counts.
                guard let record = try? decoder.decode(AuditLine.self, from: Data(line)), let name = record.agent else {
                    continue
                }
                if let agent, agent != name { continue }
                if let action = record.action {
                    add(action, verdict: record.verdict, to: &agents[name, default: AgentTotals()])
                } else if let close = record.close {
                    add(close, to: &agents[name, default: AgentTotals()])
                }
            }
        }
        return AuditReport(
            generatedAt: now,
            since: since,
            agentFilter: agent,
            files: verification.files,
            chain: .init(
                intact: verification.intact,
                lines: verification.lines,
                firstSeq: verification.firstSequence,
                lastSeq: verification.lastSequence,
                headChecked: verification.headChecked,
                confirmedThrough: verification.confirmedThrough,
                failure: verification.failure?.description,
                notes: verification.notes
            ),
            agents: agents.keys.sorted().map { summary(agent: $0, agents[$0]!) }
        )
    }

    private func inPeriod(_ timestamp: String) -> Bool {
        guard let since else { return true }
        return timestamp >= since  // both RFC 3339 UTC with milliseconds: text order is time order
    }

    private func add(_ action: ConnectAction.Body, verdict: ConnectAction.Verdict?, to totals: inout AgentTotals) {
        let metadata = action.metadata
        let at = metadata.startedAt
        guard inPeriod(at) else { return }
        let target = action.target
        switch metadata.outcome {
        case .failed:
            totals.failedConnections += 1
            let reason = metadata.error ?? "failed"
            totals.failures[target + "\u{0}" + reason, default: .init(target: target, reason: reason, count: 0, lastSeen: at)]
                .count += 1
            totals.failures[target + "\u{0}" + reason]!.lastSeen = max(totals.failures[target + "\u{0}" + reason]!.lastSeen, at)
            return
        case .connected:
            break
        }
        var destination = totals.destinations[target, default: DestinationTotals()]
        let isConnection = metadata.connectionID.map { $0 == metadata.eventID } ?? true
        if isConnection {
            destination.connections += 1
            totals.connections += 1
            destination.firstSeen = min(destination.firstSeen ?? at, at)
            destination.lastSeen = max(destination.lastSeen ?? at, at)
            totals.daily[String(at.prefix(10)), default: .init(day: String(at.prefix(10)), connections: 0, bytesFromClient: 0, bytesToClient: 0)]
                .connections += 1
        }
        if metadata.firstSeen == true {
            destination.new = true
            totals.newDestinations.append(.init(target: target, at: at))
        }
        if metadata.intercepted == true {
            destination.inspected = true
        }
        if metadata.intercepted == false, let error = metadata.error {
            let reason = metadata.inspection.map { "\($0): \(error)" } ?? error
            let key = target + "\u{0}" + reason
            totals.interceptionFailures[key, default: .init(target: target, reason: reason, count: 0, lastSeen: at)].count += 1
            totals.interceptionFailures[key]!.lastSeen = max(totals.interceptionFailures[key]!.lastSeen, at)
        }
        if metadata.method?.isEmpty ?? true, let error = metadata.error, error.hasPrefix("rejected") {
            // Refused before a method or path was read: no request line to list it by, but it was refused all
            // the same (the docs promise every refused request is listed). Kept by status and reason.
            let key = "\(metadata.status.map(String.init) ?? "")\u{0}\(error)"
            destination.rejectedUnread[key, default: .init(status: metadata.status, reason: error, count: 0)].count += 1
        } else if let method = metadata.method {
            // A request that named another host than its connection's is listed with it, as an absolute URL.
            let path = metadata.requestHost.map { host in
                "https://\(host.contains(":") ? "[\(host)]" : host)\(metadata.path ?? "")"
            } ?? metadata.path ?? ""
            // Refused by the proxy: its verdict a block (observe mode only says `would_block`), or rejected as malformed.
            let refused = verdict?.decision == "block" || (metadata.error?.hasPrefix("rejected") ?? false)
            let key = method + " " + path + (refused ? "\u{0}refused" : "")
            if destination.requests[key] != nil {
                destination.requests[key]!.count += 1
            } else if destination.requests.count < AuditReport.requestsListed {
                destination.requests[key] = (method, path, 1, refused)
            } else if destination.requestsNotListed.count < 100_000 {
                destination.requestsNotListed.insert(key)
            }
        }
        totals.destinations[target] = destination
    }

    private func add(_ close: CloseRecord.Body, to totals: inout AgentTotals) {
        guard inPeriod(close.endedAt) else { return }
        // A close record without a connected action in the period (a failed connection) adds no destination.
        guard totals.destinations[close.target] != nil else { return }
        totals.destinations[close.target]!.bytesFromClient += close.bytesFromClient
        totals.destinations[close.target]!.bytesToClient += close.bytesToClient
        let day = String(close.endedAt.prefix(10))
        totals.daily[day, default: .init(day: day, connections: 0, bytesFromClient: 0, bytesToClient: 0)].bytesFromClient +=
            close.bytesFromClient
        totals.daily[day]!.bytesToClient += close.bytesToClient
    }

    private func summary(agent: String, _ totals: AgentTotals) -> AuditReport.AgentSummary {
        let destinations = totals.destinations.keys.sorted().compactMap { target -> AuditReport.DestinationSummary? in
            let value = totals.destinations[target]!
            guard let first = value.firstSeen, let last = value.lastSeen else { return nil }
            return .init(
                target: target,
                firstSeen: first,
                lastSeen: last,
                connections: value.connections,
                bytesFromClient: value.bytesFromClient,
                bytesToClient: value.bytesToClient,
                inspected: value.inspected,
                new: value.new,
                requests: value.requests.values
                    .sorted { ($0.count, $1.method, $1.path, $1.refused ? 1 : 0) > ($1.count, $0.method, $0.path, $0.refused ? 1 : 0) }
                    .map { .init(method: $0.method, path: $0.path, count: $0.count, refused: $0.refused) },
                requestsNotListed: value.requestsNotListed.count,
                rejectedUnread: value.rejectedUnread.values.sorted { ($1.count, $0.reason) < ($0.count, $1.reason) }
            )
        }
        return .init(
            agent: agent,
            connections: totals.connections,
            failedConnections: totals.failedConnections,
            bytesFromClient: destinations.reduce(0) { $0 + $1.bytesFromClient },
            bytesToClient: destinations.reduce(0) { $0 + $1.bytesToClient },
            destinations: destinations,
            newDestinations: totals.newDestinations.sorted { ($0.at, $0.target) < ($1.at, $1.target) },
            failures: totals.failures.values.sorted { ($0.target, $0.reason) < ($1.target, $1.reason) },
            interceptionFailures: totals.interceptionFailures.values.sorted { ($0.target, $0.reason) < ($1.target, $1.reason) },
            daily: totals.daily.values.sorted { $0.day < $1.day }
        )
    }
}

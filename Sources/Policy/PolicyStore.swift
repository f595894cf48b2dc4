public import ControlPlane
import Foundation
public import Logging
import NIOCore
public import OpenSSLTLS
public import ServiceLifecycle
import Synchronization

/// The policies of each agent the proxy reports for, fetched from the control plane
/// (`GET {KAIZEN_API_URL}/v1/policy?agent=NAME`) at start and every refresh interval with `If-None-Match`,
/// and kept on disk so a restart while the control plane is down still has the last good policy.
///
/// A failed fetch, an error status or an answer that is not a valid policy keeps the policy in force and logs
/// one line (again only when the problem changes, and once when it is over).
public final class PolicyStore: Service, Sendable {
    public struct Configuration: Sendable {
        public var endpoint: ControlPlaneEndpoint
        public var apiKey: String
        /// `nil` for an http:// control plane on loopback.
        public var tls: OpenSSLContext?
        /// The agents whose policies are fetched: `KAIZEN_AGENT` and the users of `KAIZEN_PROXY_AUTH`.
        public var agents: [String]
        public var refreshInterval: Duration
        /// Where the last good policy of each agent is kept; nil keeps it in memory only.
        public var cacheDirectory: String?
        public var connectTimeout: Duration = .seconds(5)
        public var responseTimeout: Duration = .seconds(15)

        public init(
            endpoint: ControlPlaneEndpoint,
            apiKey: String,
            tls: OpenSSLContext?,
            agents: [String],
            refreshInterval: Duration,
            cacheDirectory: String?
        ) {
            self.endpoint = endpoint
            self.apiKey = apiKey
            self.tls = tls
            self.agents = agents
            self.refreshInterval = refreshInterval
            self.cacheDirectory = cacheDirectory
        }
    }

    /// One agent's policy in force and where it came from.
    public struct Loaded: Sendable, Hashable {
        public var policies: PolicySet
        public var etag: String?
        /// `control plane` or `cache`.
        public var source: String
        /// Unix milliseconds of the fetch that produced it (for a cached policy, the original fetch).
        public var fetchedAt: UInt64
    }

    /// How a fetch went, for the metrics.
    public enum FetchOutcome: String, Sendable, Hashable {
        case updated, notModified = "not_modified", invalid, refused, unavailable
    }

    private struct State {
        var loaded: [String: Loaded] = [:]
        var agents: [String]
        /// The problem last logged per agent, so each is logged once.
        var problem: [String: String] = [:]
        var notes: [String: [String]] = [:]
    }

    private let configuration: Configuration
    private let logger: Logger
    private let state: Mutex<State>
    /// Called after every fetch of one agent's policy (metrics).
    private let onFetch: (@Sendable (FetchOutcome) -> Void)?

    /// Loads the cached policies (an unreadable or invalid cache file is logged and skipped).
    public init(configuration: Configuration, logger: Logger, onFetch: (@Sendable (FetchOutcome) -> Void)? = nil) {
        self.configuration = configuration
        self.logger = logger
        self.onFetch = onFetch
        self.state = Mutex(State(agents: configuration.agents))
        for agent in configuration.agents {
            if let cached = loadCache(agent: agent) {
                state.withLock { $0.loaded[agent] = cached }
                logger.info(
                    "policy for agent \(PolicyDocument.printable(agent)) loaded from the cache until the control plane answers",
                    metadata: ["policies": "\(cached.policies.policies.count)", "fetched_at": "\(WallClock.rfc3339(unixMillis: cached.fetchedAt))"]
                )
            }
        }
    }

    /// The policy in force for `agent`; nil when none was ever loaded (or `agent` is not one the store fetches).
    public func policies(for agent: String) -> Loaded? {
        state.withLock { $0.loaded[agent] }
    }

    /// How many agents have no policy yet, of how many.
    public var unloaded: (count: Int, of: Int) {
        state.withLock { state in (state.agents.filter { state.loaded[$0] == nil }.count, state.agents.count) }
    }

    /// Replaces the list of agents (a reloaded credentials file). New agents get their cached policy at once and
    /// are fetched now, not at the next refresh.
    public func setAgents(_ agents: [String]) {
        let added = state.withLock { state -> [String] in
            let added = agents.filter { !state.agents.contains($0) }
            state.agents = agents
            return added
        }
        guard !added.isEmpty else { return }
        for agent in added {
            if let cached = loadCache(agent: agent) { state.withLock { $0.loaded[agent] = $0.loaded[agent] ?? cached } }
        }
        Task { await self.refreshAll(only: added) }
    }

    /// The first fetch, before the proxy accepts connections, waited for `timeout` at most: a control plane that
    /// does not answer delays the start by that much only (the fetch goes on, and the cache or
    /// KAIZEN_POLICY_FAIL applies meanwhile).
    public func loadInitial(timeout: Duration = .seconds(5)) async {
        let resumed = Mutex(false)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeOnce: @Sendable () -> Void = {
                if resumed.withLock({ done in defer { done = true }; return !done }) { continuation.resume() }
            }
            Task {
                await self.refreshAll()
                resumeOnce()
            }
            Task {
                try? await Task.sleep(for: timeout)
                resumeOnce()
            }
        }
    }

    public func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: self.configuration.refreshInterval) }
            } catch {
                return
            }
            await refreshAll()
        }
    }

    /// Fetches every agent's policy (or those of `only`) over one connection.
    func refreshAll(only: [String]? = nil) async {
        let agents = only ?? state.withLock { $0.agents }
        var connection: ControlPlaneConnection?
        defer { if let connection { Task { await connection.close() } } }
        for (index, agent) in agents.enumerated() {
            do {
                if connection == nil || connection?.isOpen == false {
                    connection = try await ControlPlaneConnection.connect(
                        to: configuration.endpoint,
                        tls: configuration.tls,
                        connectTimeout: Self.timeAmount(configuration.connectTimeout),
                        responseTimeout: Self.timeAmount(configuration.responseTimeout)
                    )
                }
                try await fetch(agent: agent, over: connection!)
            } catch {
                // One failure stands for this round: the remaining agents are not tried one timeout each.
                let problem = "the control plane is unreachable (\(error)); the policy in force is kept"
                for remaining in agents[index...] { finish(agent: remaining, .unavailable, problem: problem) }
                await connection?.close()
                connection = nil
                return
            }
        }
    }

    private func fetch(agent: String, over connection: ControlPlaneConnection) async throws {
        // Only a policy this run fetched is revalidated with If-None-Match: a cached one is fetched whole once, so a
        // cache file altered on disk cannot be confirmed by a 304 for its (unchanged) ETag.
        let etag = state.withLock { $0.loaded[agent].flatMap { $0.source == "control plane" ? $0.etag : nil } }
        var headers: [String: String] = ["Accept": "application/json"]
        if let etag { headers["If-None-Match"] = etag }
        let response = try await connection.get(
            path: "/v1/policy?agent=" + Self.percentEncoded(agent),
            apiKey: configuration.apiKey,
            headers: headers,
            bodyLimit: PolicyDocument.maxBytes + 1
        )
        switch response.status {
        case 304 where etag != nil:
            finish(agent: agent, .notModified, problem: nil)
        case 200:
            let document: PolicyDocument
            do {
                document = try PolicyDocument(parsing: response.bytes)
            } catch {
                finish(agent: agent, .invalid, problem: "the control plane sent a policy the proxy cannot use (\(error)); the policy in force is kept")
                return
            }
            install(agent: agent, document: document, etag: response.etag, raw: response.bytes)
            finish(agent: agent, .updated, problem: nil)
        case 401, 403:
            finish(agent: agent, .refused, problem: "the control plane refused the API key for the policy (HTTP \(response.status)): check KAIZEN_API_KEY; the policy in force is kept")
        default:
            finish(agent: agent, .unavailable, problem: "the control plane answered HTTP \(response.status) for the policy; the policy in force is kept")
        }
    }

    private func install(agent: String, document: PolicyDocument, etag: String?, raw: [UInt8]) {
        let now = WallClock.nowMillis()
        let loaded = Loaded(policies: document.policies, etag: etag, source: "control plane", fetchedAt: now)
        let (changed, newNotes) = state.withLock { state -> (Bool, [String]) in
            let changed = state.loaded[agent]?.policies != document.policies
            state.loaded[agent] = loaded
            let old = state.notes[agent] ?? []
            state.notes[agent] = document.notes + document.problems
            return (changed, (document.notes + document.problems).filter { !old.contains($0) })
        }
        for note in newNotes {
            let metadata: Logger.Metadata = ["agent": "\(PolicyDocument.printable(agent))"]
            if document.problems.contains(note) { logger.error("\(note)", metadata: metadata) } else { logger.notice("\(note)", metadata: metadata) }
        }
        if changed {
            let names = document.policies.policies.map { "\($0.name) (\($0.mode.rawValue)\($0.enabled ? "" : ", disabled"))" }
            logger.info(
                "policy for agent \(PolicyDocument.printable(agent)) updated: \(names.isEmpty ? "no policies" : names.map(PolicyDocument.printable).joined(separator: ", "))"
            )
        }
        saveCache(agent: agent, etag: etag, raw: raw, fetchedAt: now)
    }

    /// Records the outcome; logs a problem once, and once when it is over.
    private func finish(agent: String, _ outcome: FetchOutcome, problem: String?) {
        let (log, recovered) = state.withLock { state -> (String?, Bool) in
            let previous = state.problem[agent]
            state.problem[agent] = problem
            if problem == nil { return (nil, previous != nil) }
            return (previous == problem ? nil : problem, false)
        }
        onFetch?(outcome)
        if let log {
            let hasPolicy = policies(for: agent) != nil
            logger.error(
                "\(log)\(hasPolicy ? "" : " (none was ever loaded: KAIZEN_POLICY_FAIL decides)")",
                metadata: ["agent": "\(PolicyDocument.printable(agent))"]
            )
        }
        if recovered {
            logger.notice("policy for agent \(PolicyDocument.printable(agent)) fetched from the control plane again")
        }
    }

    // MARK: the cache

    private func cachePath(agent: String) -> String? {
        guard let directory = configuration.cacheDirectory else { return nil }
        // Hex of the agent's bytes: any name makes a safe, distinct file name.
        let hex = agent.utf8.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
        return directory + "/policy-" + hex + ".json"
    }

    private func saveCache(agent: String, etag: String?, raw: [UInt8], fetchedAt: UInt64) {
        guard let path = cachePath(agent: agent) else { return }
        var json = JSONWriter()
        json.beginObject()
        json.field("agent", agent)
        if let etag { json.field("etag", etag) }
        json.field("fetched_at_ms", fetchedAt)
        json.field("document", String(decoding: raw, as: UTF8.self))
        json.endObject()
        let bytes = json.take()
        let failure = bytes.withUnsafeBytes { raw -> FileIO.Failure? in
            do {
                try FileIO.replace(path, with: raw)
                return nil
            } catch let failure as FileIO.Failure {
                return failure
            } catch {
                return FileIO.Failure(description: "\(error)")
            }
        }
        if let failure {
            logger.error("cannot keep the policy on disk", metadata: ["file": "\(path)", "error": "\(failure)"])
        }
    }

    private func loadCache(agent: String) -> Loaded? {
        guard let path = cachePath(agent: agent), FileManager.default.fileExists(atPath: path) else { return nil }
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                object["agent"] as? String == agent, let document = object["document"] as? String,
                let fetchedAt = (object["fetched_at_ms"] as? NSNumber)?.uint64Value
            else {
                throw PolicyDocument.Invalid(description: "not a policy cache file")
            }
            let parsed = try PolicyDocument(parsing: Array(document.utf8))
            return Loaded(policies: parsed.policies, etag: object["etag"] as? String, source: "cache", fetchedAt: fetchedAt)
        } catch {
            logger.error("the cached policy cannot be used; waiting for the control plane", metadata: ["file": "\(path)", "error": "\(error)"])
            return nil
        }
    }

    private static func timeAmount(_ duration: Duration) -> TimeAmount {
        .nanoseconds(duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    /// RFC 3986 unreserved characters as they are, everything else percent-encoded.
    static func percentEncoded(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return out
    }
}

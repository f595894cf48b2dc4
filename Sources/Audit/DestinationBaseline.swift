import ControlPlane
import Foundation
public import Logging
public import ServiceLifecycle
import Synchronization

/// Which destinations each agent has connected to before, so the first connection to a new one stands out.
///
/// Kept per agent: `host:port` with first-seen and last-seen times and a count. Bounded: past `maxEntries`
/// destinations in all, the ones seen longest ago are forgotten (a forgotten destination counts as new again).
/// While an agent is in its learning period (from the first time the proxy saw that agent), new destinations
/// are learned silently.
///
/// `observe` runs on event loops: one uncontended lock and a dictionary lookup. Saving is the service's job.
public final class DestinationBaseline: Sendable {
    public struct Entry: Sendable, Hashable, Codable {
        /// Unix milliseconds.
        public var firstSeen: UInt64
        public var lastSeen: UInt64
        public var count: UInt64

        enum CodingKeys: String, CodingKey {
            case firstSeen = "first_seen_ms"
            case lastSeen = "last_seen_ms"
            case count
        }
    }

    struct Agent: Sendable, Codable {
        /// When the proxy first saw this agent (Unix milliseconds): the learning period starts here.
        var since: UInt64
        var destinations: [String: Entry]

        enum CodingKeys: String, CodingKey {
            case since = "since_ms"
            case destinations
        }
    }

    struct State: Sendable {
        var agents: [String: Agent] = [:]
        var total = 0
        var changes: UInt64 = 0
    }

    private let state: Mutex<State>
    public let maxEntries: Int
    public let learningMillis: UInt64

    public init(maxEntries: Int, learningPeriod: Duration) {
        self.state = Mutex(State())
        self.maxEntries = maxEntries
        let (seconds, attoseconds) = learningPeriod.components
        self.learningMillis = UInt64(max(0, seconds)) * 1000 + UInt64(max(0, attoseconds) / 1_000_000_000_000_000)
    }

    /// Records a connection of `agent` to `destination` (`host:port`) at `now` (Unix milliseconds). True when the
    /// destination is new for the agent and the agent is past its learning period: flag it.
    public func observe(agent: String, destination: String, now: UInt64) -> Bool {
        state.withLock { state in
            state.changes &+= 1
            if var entry = state.agents[agent]?.destinations[destination] {
                entry.lastSeen = max(entry.lastSeen, now)
                entry.count += 1
                state.agents[agent]!.destinations[destination] = entry
                return false
            }
            if state.agents[agent] == nil {
                state.agents[agent] = Agent(since: now, destinations: [:])
            }
            let learning = now < state.agents[agent]!.since &+ learningMillis
            state.agents[agent]!.destinations[destination] = Entry(firstSeen: now, lastSeen: now, count: 1)
            state.total += 1
            if state.total > maxEntries { Self.evict(&state, keeping: maxEntries) }
            return !learning
        }
    }

    /// The entry for one destination, if known.
    public func entry(agent: String, destination: String) -> Entry? {
        state.withLock { $0.agents[agent]?.destinations[destination] }
    }

    public var count: Int { state.withLock { $0.total } }

    /// Forgets the least recently seen destinations, a few percent at once so eviction stays rare.
    private static func evict(_ state: inout State, keeping limit: Int) {
        let target = max(0, limit - max(1, limit / 32))
        var all: [(lastSeen: UInt64, agent: String, destination: String)] = []
        all.reserveCapacity(state.total)
        for (agent, value) in state.agents {
            for (destination, entry) in value.destinations { all.append((entry.lastSeen, agent, destination)) }
        }
        all.sort { $0.lastSeen < $1.lastSeen }
        for item in all.prefix(state.total - target) {
            state.agents[item.agent]!.destinations[item.destination] = nil
        }
        state.total = target
    }

    // MARK: Persistence

    struct Snapshot: Codable {
        var version = 1
        var agents: [String: Agent]
    }

    /// The file's bytes, and the change counter they reflect.
    func snapshot() throws -> (data: Data, changes: UInt64) {
        let (agents, changes) = state.withLock { ($0.agents, $0.changes) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try encoder.encode(Snapshot(agents: agents)), changes)
    }

    var changes: UInt64 { state.withLock { $0.changes } }

    /// Replaces the state with a saved one.
    func restore(_ data: Data) throws {
        let snapshot = try JSONDecoder().decode(Snapshot.self, from: data)
        guard snapshot.version == 1 else { throw BaselineError.unknownVersion(snapshot.version) }
        state.withLock { state in
            state.agents = snapshot.agents
            state.total = snapshot.agents.values.reduce(0) { $0 + $1.destinations.count }
            if state.total > maxEntries { Self.evict(&state, keeping: maxEntries) }
        }
    }
}

public enum BaselineError: Error, CustomStringConvertible {
    case unknownVersion(Int)
    case unreadable(path: String, reason: String)
    case directory(String)

    public var description: String {
        switch self {
        case .unknownVersion(let version): "unknown baseline version \(version)"
        case .unreadable(let path, let reason): "cannot read \(path): \(reason)"
        case .directory(let reason): reason
        }
    }
}

/// Loads the baseline from the state directory at start and saves it there every few seconds when it changed,
/// and once more on shutdown. The file is replaced atomically (written aside, fsynced, renamed), mode 0600.
public final class BaselineStore: Service {
    public let baseline: DestinationBaseline
    public let path: String
    private let interval: Duration
    private let logger: Logger

    public static let fileName = "baseline.json"

    /// Creates the directory (0700) if needed and loads the saved baseline, if any.
    public init(
        directory: String,
        baseline: DestinationBaseline,
        saveInterval: Duration = .seconds(10),
        logger: Logger
    ) throws(BaselineError) {
        self.baseline = baseline
        self.path = directory + "/" + Self.fileName
        self.interval = saveInterval
        self.logger = logger
        do {
            try StateDirectory.create(directory)
        } catch {
            throw .directory("\(error)")
        }
        guard FileManager.default.fileExists(atPath: path) else { return }
        do {
            try baseline.restore(Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw .unreadable(path: path, reason: "\(error)")
        }
    }

    public func run() async throws {
        var saved = baseline.changes
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.interval) }
            if baseline.changes != saved { saved = save() ?? saved }
        }
        if baseline.changes != saved { save() }
    }

    /// Writes the file; the change counter saved, or nil when writing failed (logged).
    @discardableResult
    public func save() -> UInt64? {
        do {
            let (data, changes) = try baseline.snapshot()
            try StateDirectory.replace(path, with: data)
            return changes
        } catch {
            logger.error("cannot save the destination baseline", metadata: ["file": "\(path)", "error": "\(error)"])
            return nil
        }
    }
}

/// Files under the state directory, created with their final modes.
public enum StateDirectory {
    /// Creates `directory` and its missing parents with mode 0700 (`mkdir -p`).
    public static func create(_ directory: String) throws {
        var path = directory.hasPrefix("/") ? "" : "."
        for component in directory.split(separator: "/") {
            path += "/" + component
            if mkdir(path, 0o700) != 0 && errno != EEXIST {
                throw FileIO.Failure(description: "cannot create \(path): \(FileIO.reason(errno))")
            }
        }
        var info = stat()
        guard stat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw FileIO.Failure(description: "\(directory) is not a directory")
        }
        guard access(directory, W_OK | X_OK) == 0 else {
            throw FileIO.Failure(description: "cannot write in \(directory): \(FileIO.reason(errno))")
        }
    }

    /// Writes `data` beside `path` (mode 0600 from creation), fsyncs it and renames it over `path`.
    static func replace(_ path: String, with data: Data) throws {
        try data.withUnsafeBytes { try FileIO.replace(path, with: $0) }
    }
}

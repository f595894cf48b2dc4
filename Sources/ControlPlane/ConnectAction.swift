/// One `connect` action in the control plane's shape (the Kaizen SDK's `schema_version` "1"):
///
/// `{"schema_version":"1","agent":"egress-agent","action":{"kind":"connect","target":"example.org:443",
/// "metadata":{"source":"egress",…}},"verdict":{"decision":"allow","reason":"observed"}}`
///
/// The same value is written to the local JSON-lines log and, with an API key, sent to the control plane.
public struct ConnectAction: Sendable, Hashable, Decodable {
    /// The fields, kept in one shared, immutable box: an action is copied into every sink and queue it passes on its
    /// way to the log and the control plane, and a copy of the box is one reference where a copy of the fields would
    /// be one for each of the metadata's strings. A change makes a new box.
    private final class Storage: Sendable {
        let fields: Fields

        init(_ fields: Fields) {
            self.fields = fields
        }
    }

    private struct Fields: Sendable, Hashable, Decodable {
        var schemaVersion: String
        var agent: String
        var action: Body
        var verdict: Verdict

        enum CodingKeys: String, CodingKey {
            case schemaVersion = "schema_version"
            case agent, action, verdict
        }
    }

    private var storage: Storage

    public var schemaVersion: String {
        get { storage.fields.schemaVersion }
        set { change { $0.schemaVersion = newValue } }
    }

    public var agent: String {
        get { storage.fields.agent }
        set { change { $0.agent = newValue } }
    }

    public var action: Body {
        get { storage.fields.action }
        set { change { $0.action = newValue } }
    }

    public var verdict: Verdict {
        get { storage.fields.verdict }
        set { change { $0.verdict = newValue } }
    }

    public init(agent: String, target: String, metadata: ConnectMetadata, verdict: Verdict = .observed) {
        storage = Storage(
            Fields(
                schemaVersion: "1", agent: agent, action: Body(kind: "connect", target: target, metadata: metadata),
                verdict: verdict))
    }

    public init(from decoder: any Decoder) throws {
        storage = Storage(try Fields(from: decoder))
    }

    public static func == (lhs: ConnectAction, rhs: ConnectAction) -> Bool {
        lhs.storage === rhs.storage || lhs.storage.fields == rhs.storage.fields
    }

    public func hash(into hasher: inout Hasher) {
        storage.fields.hash(into: &hasher)
    }

    private mutating func change(_ body: (inout Fields) -> Void) {
        var fields = storage.fields
        body(&fields)
        storage = Storage(fields)
    }

    public struct Body: Sendable, Hashable, Decodable {
        public var kind: String
        /// `host:port`, with an IPv6 host in brackets (`[2001:db8::1]:443`).
        public var target: String
        public var metadata: ConnectMetadata
    }

    public struct Verdict: Sendable, Hashable, Decodable {
        public var decision: String
        public var reason: String

        public init(decision: String, reason: String) {
            self.decision = decision
            self.reason = reason
        }

        /// The proxy observed the connection and let it through (no policy is enforced yet).
        public static let observed = Verdict(decision: "allow", reason: "observed")
    }

    /// `{"schema_version":"1","agent":…,"action":{"kind":"connect","target":…,"metadata":{…}},"verdict":{…}}`
    public func writeJSON(to json: inout JSONWriter) {
        json.beginObject()
        json.field("schema_version", storage.fields.schemaVersion)
        json.field("agent", storage.fields.agent)
        json.key("action")
        json.beginObject()
        json.field("kind", storage.fields.action.kind)
        json.field("target", storage.fields.action.target)
        json.key("metadata")
        storage.fields.action.metadata.writeJSON(to: &json)
        json.endObject()
        json.key("verdict")
        json.beginObject()
        json.field("decision", storage.fields.verdict.decision)
        json.field("reason", storage.fields.verdict.reason)
        json.endObject()
        json.endObject()
    }
}

extension ConnectAction: CustomReflectable {
    /// The fields, not the box, in descriptions and test failures.
    public var customMirror: Mirror {
        Mirror(
            self,
            children: ["schemaVersion": schemaVersion, "agent": agent, "action": action, "verdict": verdict],
            displayStyle: .struct)
    }
}

/// One `connect` action in the control plane's shape (the Kaizen SDK's `schema_version` "1"):
///
/// `{"schema_version":"1","agent":"egress-agent","action":{"kind":"connect","target":"example.org:443",
/// "metadata":{"source":"egress",…}},"verdict":{"decision":"allow","reason":"observed"}}`
///
/// The same value is written to the local JSON-lines log and, with an API key, sent to the control plane.
public struct ConnectAction: Sendable, Hashable, Decodable {
    public var schemaVersion: String
    public var agent: String
    public var action: Body
    public var verdict: Verdict

    public init(agent: String, target: String, metadata: ConnectMetadata, verdict: Verdict = .observed) {
        self.schemaVersion = "1"
        self.agent = agent
        self.action = Body(kind: "connect", target: target, metadata: metadata)
        self.verdict = verdict
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

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case agent, action, verdict
    }

    /// `{"schema_version":"1","agent":…,"action":{"kind":"connect","target":…,"metadata":{…}},"verdict":{…}}`
    public func writeJSON(to json: inout JSONWriter) {
        json.beginObject()
        json.field("schema_version", schemaVersion)
        json.field("agent", agent)
        json.key("action")
        json.beginObject()
        json.field("kind", action.kind)
        json.field("target", action.target)
        json.key("metadata")
        action.metadata.writeJSON(to: &json)
        json.endObject()
        json.key("verdict")
        json.beginObject()
        json.field("decision", verdict.decision)
        json.field("reason", verdict.reason)
        json.endObject()
        json.endObject()
    }
}

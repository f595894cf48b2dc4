/// The end of a connection (or of one plain-HTTP exchange), written to the local log after its action.
///
/// `{"schema_version":"1","agent":"egress-agent","close":{"event_id":"…","target":"example.org:443",…}}`
public struct CloseRecord: Sendable, Hashable, Decodable {
    public var schemaVersion: String = "1"
    public var agent: String
    public var close: Body

    public init(agent: String, close: Body) {
        self.agent = agent
        self.close = close
    }

    /// Who ended the connection.
    public enum ClosedBy: String, Sendable, Hashable, Decodable {
        case client
        case upstream
        case proxy
    }

    public struct Body: Sendable, Hashable, Decodable {
        /// The `event_id` of the action this closes.
        public var eventID: EventID
        public var target: String
        /// Bytes the client sent towards the destination (after the CONNECT request, or the request body).
        public var bytesFromClient: UInt64
        /// Bytes the destination sent back to the client (the response body, for plain HTTP).
        public var bytesToClient: UInt64
        public var durationMs: UInt64
        public var closedBy: ClosedBy
        /// `eof`, `idle_timeout`, `shutdown`, `error: …`, `complete` (a finished plain-HTTP exchange).
        public var reason: String
        /// The upstream's response status, for plain HTTP.
        public var status: Int?
        public var endedAt: String

        public init(
            eventID: EventID,
            target: String,
            bytesFromClient: UInt64,
            bytesToClient: UInt64,
            durationMs: UInt64,
            closedBy: ClosedBy,
            reason: String,
            status: Int? = nil,
            endedAt: String
        ) {
            self.eventID = eventID
            self.target = target
            self.bytesFromClient = bytesFromClient
            self.bytesToClient = bytesToClient
            self.durationMs = durationMs
            self.closedBy = closedBy
            self.reason = reason
            self.status = status
            self.endedAt = endedAt
        }

        enum CodingKeys: String, CodingKey {
            case eventID = "event_id"
            case target
            case bytesFromClient = "bytes_from_client"
            case bytesToClient = "bytes_to_client"
            case durationMs = "duration_ms"
            case closedBy = "closed_by"
            case reason, status
            case endedAt = "ended_at"
        }
    }

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case agent, close
    }

    /// `{"schema_version":"1","agent":…,"close":{"event_id":…,…}}`
    public func writeJSON(to json: inout JSONWriter) {
        json.beginObject()
        json.field("schema_version", schemaVersion)
        json.field("agent", agent)
        json.key("close")
        json.beginObject()
        json.field("event_id", close.eventID.description)
        json.field("target", close.target)
        json.field("bytes_from_client", close.bytesFromClient)
        json.field("bytes_to_client", close.bytesToClient)
        json.field("duration_ms", close.durationMs)
        json.field("closed_by", close.closedBy.rawValue)
        json.field("reason", close.reason)
        if let status = close.status { json.field("status", status) }
        json.field("ended_at", close.endedAt)
        json.endObject()
        json.endObject()
    }
}

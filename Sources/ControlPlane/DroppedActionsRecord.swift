/// What the control plane gets in place of actions the spool had to drop at its cap
/// (`KAIZEN_SPOOL_MAX_BYTES`): how many, how many bytes, and the time range they covered, so the gap is
/// visible exactly where the missing actions would have been.
///
/// `{"schema_version":"1","agent":…,"action":{"kind":"egress_gap","target":"spool","metadata":{"source":"egress",
/// "event_id":…,"reason":"spool cap reached","dropped_actions":N,"dropped_bytes":B,"oldest_started_at":…,
/// "newest_started_at":…,"dropped_from":…,"dropped_until":…}},"verdict":{"decision":"allow","reason":"observed"}}`
public struct DroppedActionsRecord: Sendable, Hashable {
    public static let kind = "egress_gap"

    public var agent: String
    public var eventID: EventID
    public var drops: Spool.Drops
    /// "spool cap reached" (KAIZEN_SPOOL_MAX_BYTES), or "spool write failed" (a full disk, an I/O error).
    public var reason: String

    public init(agent: String, eventID: EventID = .generate(), drops: Spool.Drops, reason: String = "spool cap reached") {
        self.agent = agent
        self.eventID = eventID
        self.drops = drops
        self.reason = reason
    }

    public func writeJSON(to json: inout JSONWriter) {
        json.beginObject()
        json.field("schema_version", "1")
        json.field("agent", agent)
        json.key("action")
        json.beginObject()
        json.field("kind", Self.kind)
        json.field("target", "spool")
        json.key("metadata")
        json.beginObject()
        json.field("source", "egress")
        json.field("event_id", eventID.description)
        json.field("reason", reason)
        json.field("dropped_actions", drops.records)
        json.field("dropped_bytes", Int(drops.bytes))
        json.field("oldest_started_at", drops.oldestStartedAt)
        json.field("newest_started_at", drops.newestStartedAt)
        json.field("dropped_from", WallClock.rfc3339(unixMillis: drops.firstAt))
        json.field("dropped_until", WallClock.rfc3339(unixMillis: drops.lastAt))
        json.endObject()
        json.endObject()
        json.key("verdict")
        json.beginObject()
        json.field("decision", "allow")
        json.field("reason", "observed")
        json.endObject()
        json.endObject()
    }
}

/// Everything the proxy records: an action when a connection is decided, a close record when it ends.
public enum ActionRecord: Sendable, Hashable {
    case action(ConnectAction)
    case close(CloseRecord)

    /// The record as one line of JSON, newline included.
    public func jsonLine() -> [UInt8] {
        var json = JSONWriter()
        writeJSONLine(to: &json)
        return json.take()
    }

    /// Writes the record as one line of JSON, newline included.
    public func writeJSONLine(to json: inout JSONWriter) {
        switch self {
        case .action(let action): action.writeJSON(to: &json)
        case .close(let close): close.writeJSON(to: &json)
        }
        json.newline()
    }
}

/// Where records go. `record` is called on event loops: it must return at once and never block.
public protocol ActionSink: Sendable {
    func record(_ record: ActionRecord)
}

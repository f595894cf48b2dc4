import ControlPlane
public import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `KAIZEN_LOG_FORMAT=json`: one JSON object per log event on standard error, for log pipelines:
/// `{"ts":"2026-11-27T02:31:32.123Z","level":"info","logger":"kaizen-egress","msg":"…","source":"EgressProxy",…metadata}`.
/// Metadata keys become fields (nested values as their text); strings are escaped, so no value can break a line.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let label: String

    private let output: LogOutput

    public init(label: String, level: Logger.Level, output: LogOutput = .standardError) {
        self.label = label
        self.logLevel = level
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var json = JSONWriter()
        json.beginObject()
        json.field("ts", WallClock.rfc3339(unixMillis: WallClock.nowMillis()))
        json.field("level", event.level.rawValue)
        json.field("logger", label)
        json.field("msg", event.message.description)
        json.field("source", event.source)
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        for key in merged.keys.sorted() where !["ts", "level", "logger", "msg", "source"].contains(key) {
            json.field(named: key, Self.text(merged[key]!))
        }
        json.endObject()
        output.write(json.take(), urgent: event.level >= .warning)
    }

    private static func text(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let string): string
        case .stringConvertible(let convertible): convertible.description
        case .array, .dictionary: value.description
        }
    }
}

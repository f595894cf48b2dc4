import Foundation
import Telemetry
import Testing

@Suite struct MetricNameTests {
    @Test func everyMetricIsExportedAndDocumented() throws {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("docs/operations.md")
        let text = try String(contentsOf: docs, encoding: .utf8)
        let export = PrometheusExport()
        _ = ProxyMetrics(factory: export.factory)
        let exposition = String(decoding: export.exposition(), as: UTF8.self)
        #expect(Set(MetricName.all.map(\.name)).count == MetricName.all.count, "names are unique")
        for metric in MetricName.all {
            #expect(text.contains("| `\(metric.name)` | \(metric.type) |"), "\(metric.name) is not in docs/operations.md")
            #expect(exposition.contains("# TYPE \(metric.name) \(metric.type)"), "\(metric.name) is not exported as a \(metric.type)")
            #expect(metric.name.hasPrefix("kaizen_egress_"))
            #expect(metric.type != "counter" || metric.name.hasSuffix("_total"))
        }
    }

    @Test func labelledCountersCountUnderTheirLabels() {
        let export = PrometheusExport()
        let metrics = ProxyMetrics(factory: export.factory)
        metrics.connection(transport: "connect", outcome: "blocked")
        metrics.connection(transport: "connect", outcome: "blocked")
        metrics.connection(transport: "nonsense", outcome: "connected")  // not a known value: ignored, no new series
        metrics.policyDecision("would_block")
        let exposition = String(decoding: export.exposition(), as: UTF8.self)
        #expect(exposition.contains(#"kaizen_egress_connections_total{transport="connect",outcome="blocked"} 2"#))
        #expect(exposition.contains(#"kaizen_egress_policy_decisions_total{decision="would_block"} 1"#))
        #expect(!exposition.contains("nonsense"))
    }
}

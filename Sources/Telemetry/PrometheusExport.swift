import CoreMetrics
public import Prometheus

/// The Prometheus side of the proxy's metrics: a registry of its own (no global state, so tests and several
/// proxies in one process do not mix), the swift-metrics factory over it with buckets that suit each
/// histogram, and the text exposition `/metrics` serves.
public final class PrometheusExport: Sendable {
    public let registry: PrometheusCollectorRegistry
    public let factory: PrometheusMetricsFactory

    public init() {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // Minting a P-256 leaf takes about a millisecond; delivery is a network round trip or a few.
        factory.durationHistogramBuckets[MetricName.mintDuration.name] = [
            .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
            .milliseconds(10), .milliseconds(25), .milliseconds(100),
        ]
        factory.durationHistogramBuckets[MetricName.deliveryDuration.name] = [
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(10), .seconds(30),
        ]
        self.registry = registry
        self.factory = factory
    }

    /// The Prometheus text format (version 0.0.4) of every metric.
    public func exposition() -> [UInt8] {
        var buffer: [UInt8] = []
        buffer.reserveCapacity(8192)
        registry.emit(into: &buffer)
        return buffer
    }
}

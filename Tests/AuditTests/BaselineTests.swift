@testable import Audit
import Foundation
import Logging
import Testing

/// New-destination detection: the first connection per agent and destination is flagged once, learning periods
/// are silent, the size stays bounded, and the baseline survives a restart.
@Suite struct BaselineTests {
    let start: UInt64 = 1_790_000_000_000

    @Test func firstConnectionPerAgentAndDestinationIsFlaggedOnce() {
        let baseline = DestinationBaseline(maxEntries: 100, learningPeriod: .zero)
        #expect(baseline.observe(agent: "a", destination: "example.org:443", now: start))
        #expect(!baseline.observe(agent: "a", destination: "example.org:443", now: start + 5))
        #expect(baseline.observe(agent: "a", destination: "example.org:80", now: start + 6))  // another port
        #expect(baseline.observe(agent: "b", destination: "example.org:443", now: start + 7))  // another agent
        let entry = baseline.entry(agent: "a", destination: "example.org:443")
        #expect(entry == .init(firstSeen: start, lastSeen: start + 5, count: 2))
    }

    @Test func learningPeriodIsSilentThenFlags() {
        let baseline = DestinationBaseline(maxEntries: 100, learningPeriod: .seconds(3600))
        #expect(!baseline.observe(agent: "a", destination: "one:443", now: start))
        #expect(!baseline.observe(agent: "a", destination: "two:443", now: start + 3_599_999))
        #expect(baseline.observe(agent: "a", destination: "three:443", now: start + 3_600_000))
        #expect(!baseline.observe(agent: "a", destination: "two:443", now: start + 3_600_001))  // learned
        // A new agent gets its own learning period.
        #expect(!baseline.observe(agent: "b", destination: "three:443", now: start + 3_600_002))
    }

    @Test func sizeIsBoundedAndTheLeastRecentlySeenGoFirst() {
        let baseline = DestinationBaseline(maxEntries: 64, learningPeriod: .zero)
        _ = baseline.observe(agent: "a", destination: "keep:443", now: start)
        for index in 0..<1000 {
            _ = baseline.observe(agent: "a", destination: "host\(index):443", now: start + UInt64(index) + 1)
            _ = baseline.observe(agent: "a", destination: "keep:443", now: start + UInt64(index) + 1)
            #expect(baseline.count <= 64)
        }
        #expect(baseline.entry(agent: "a", destination: "keep:443") != nil)
        #expect(baseline.entry(agent: "a", destination: "host999:443") != nil)
        #expect(baseline.entry(agent: "a", destination: "host0:443") == nil)
    }

    @Test func survivesARestartWithModes() throws {
        let directory = NSTemporaryDirectory() + "baseline-" + UUID().uuidString + "/state"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let logger = Logger(label: "test")
        let first = DestinationBaseline(maxEntries: 100, learningPeriod: .zero)
        let store = try BaselineStore(directory: directory, baseline: first, logger: logger)
        #expect(first.observe(agent: "a", destination: "example.org:443", now: start))
        #expect(store.save() != nil)
        let file = try FileManager.default.attributesOfItem(atPath: directory + "/baseline.json")
        #expect((file[.posixPermissions] as? Int) == 0o600)
        let dir = try FileManager.default.attributesOfItem(atPath: directory)
        #expect((dir[.posixPermissions] as? Int) == 0o700)

        let second = DestinationBaseline(maxEntries: 100, learningPeriod: .zero)
        _ = try BaselineStore(directory: directory, baseline: second, logger: logger)
        #expect(!second.observe(agent: "a", destination: "example.org:443", now: start + 10))
        #expect(second.entry(agent: "a", destination: "example.org:443")?.count == 2)
        #expect(second.observe(agent: "a", destination: "new.example:443", now: start + 11))
    }

    @Test func aDamagedFileRefusesToStart() throws {
        let directory = NSTemporaryDirectory() + "baseline-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Data("{not json".utf8).write(to: URL(fileURLWithPath: directory + "/baseline.json"))
        #expect(throws: BaselineError.self) {
            _ = try BaselineStore(
                directory: directory, baseline: DestinationBaseline(maxEntries: 10, learningPeriod: .zero),
                logger: Logger(label: "test"))
        }
    }
}

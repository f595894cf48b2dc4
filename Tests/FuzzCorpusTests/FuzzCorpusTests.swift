import Foundation
import FuzzEntries
import Testing

/// Replays the fuzzers' seed corpus (and every crash they ever found, once added there) through the same entry
/// points the libFuzzer targets in Fuzz/ call. A crash stops the test process: that is the failure.
@Suite struct FuzzCorpusTests {
    static func inputs(_ target: String) throws -> [(String, Data)] {
        let directory = try #require(Bundle.module.resourceURL).appendingPathComponent("Corpus/\(target)")
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        return try names.map { ($0, try Data(contentsOf: directory.appendingPathComponent($0))) }
    }

    /// Every input whole, and every prefix of it: the parsers see inputs cut anywhere.
    static func replay(_ target: String, _ entry: (UnsafeRawBufferPointer) -> Void) throws -> Int {
        var runs = 0
        for (_, data) in try inputs(target) {
            let bytes = [UInt8](data)
            for length in 0...bytes.count {
                bytes.prefix(length).withUnsafeBytes { entry(UnsafeRawBufferPointer($0)) }
                runs += 1
            }
        }
        return runs
    }

    @Test func clientHelloCorpus() throws {
        #expect(try Self.replay("clienthello", FuzzEntries.clientHello) > 1000)
    }

    @Test func requestHeadCorpus() throws {
        #expect(try Self.inputs("request-head").count >= 100)
        #expect(try Self.replay("request-head", FuzzEntries.requestHeads) > 1000)
    }

    @Test func responseCorpus() throws {
        #expect(try Self.replay("response", FuzzEntries.http1ResponseDifferential) > 1000)
    }

    @Test func connectAuthorityCorpus() throws {
        #expect(try Self.replay("connect-authority", FuzzEntries.connectAuthority) > 100)
    }
}

@testable import ControlPlane
import Foundation
import Testing

@Suite struct DeadLetterFileTests {
    /// The file and its one older generation never pass twice the cap; the newest lines are kept, the oldest go.
    @Test func theDeadLetterFileIsCappedDroppingTheOldest() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kaizen-dl-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let file = DeadLetterFile(directory: directory, maxBytes: 1000)
        func line(_ index: Int) -> [UInt8] { Array("{\"n\":\(String(format: "%04d", index))}\n".utf8) }  // 13 bytes
        for index in 0..<1000 { #expect(file.append(line(index)) == nil) }
        let current = try String(contentsOfFile: file.path, encoding: .utf8)
        let previous = try String(contentsOfFile: file.previousPath, encoding: .utf8)
        #expect(current.utf8.count <= 1000 && previous.utf8.count <= 1000)
        #expect(current.hasSuffix(String(decoding: line(999), as: UTF8.self)))
        #expect(!(previous + current).contains("\"n\":0000"))
        let mode = try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? NSNumber
        #expect(mode?.intValue == 0o600)
    }

    @Test func aRepeatedProblemIsLoggedOnceAMinuteWithTheCount() {
        var log = LogEvery(.seconds(60))
        let start = ContinuousClock.now
        #expect(log.note(now: start) == 1)
        #expect(log.note(now: start + .seconds(1)) == nil)
        #expect(log.note(3, now: start + .seconds(59)) == nil)
        #expect(log.note(now: start + .seconds(61)) == 5)
        #expect(log.note(now: start + .seconds(62)) == nil)
    }
}

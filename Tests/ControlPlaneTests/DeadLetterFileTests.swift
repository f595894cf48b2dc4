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
        for index in 0..<300 { #expect(file.append(line(index)) == nil) }
        let current = try String(contentsOfFile: file.path, encoding: .utf8)
        let previous = try String(contentsOfFile: file.previousPath, encoding: .utf8)
        #expect(current.utf8.count <= 1000 && previous.utf8.count <= 1000)
        #expect(current.hasSuffix(String(decoding: line(299), as: UTF8.self)))
        #expect(!(previous + current).contains("\"n\":0000"))
        let mode = try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? NSNumber
        #expect(mode?.intValue == 0o600)
    }

    /// An action set aside is on the disk (fsynced) when `append` returns, before the reporter marks it done in the
    /// spool (whose files are fsynced later): a crash of the machine cannot leave it skipped there and missing here.
    /// The directory is synced too when the file is new (its name must survive as well).
    @Test func aLineSetAsideIsSyncedBeforeAppendReturns() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kaizen-dl-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let file = DeadLetterFile(directory: directory, maxBytes: 1 << 20)
        // What the file held each time it was synced (the directory: -1).
        let synced = Locked<[Int]>([])
        let token = FileIO.addObserver { event in
            guard case .synced(let path) = event, path.hasPrefix(directory) else { return }
            let size = (try? FileManager.default.attributesOfItem(atPath: file.path)[.size] as? NSNumber)?.intValue ?? 0
            synced.withLock { $0.append(path == file.path ? size : -1) }
        }
        defer { FileIO.removeObserver(token) }
        let line = Array("{\"reason\":\"rejected\"}\n".utf8)
        #expect(file.append(line) == nil)
        #expect(synced.withLock { $0 } == [line.count, -1])  // the new file's line, then the directory's entry for it
        #expect(file.append(line) == nil)
        #expect(synced.withLock { $0 } == [line.count, -1, 2 * line.count])
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

/// A value shared with a `FileIO` observer (which may be called from any thread).
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) {
        self.value = value
    }

    func withLock<Result>(_ body: (inout Value) -> Result) -> Result {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}

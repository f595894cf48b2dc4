@testable import ControlPlane
import Foundation
import Testing

@Suite struct SpoolTests {
    func directory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("kaizen-spool-\(UUID().uuidString)").path
    }

    func record(_ index: Int, size: Int = 40) -> [UInt8] {
        let text = "{\"n\":\(index)}"
        return Array(text.utf8) + [UInt8](repeating: 0x20, count: max(0, size - text.utf8.count))
    }

    @Test func recordsSurviveReopeningInOrder() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 1000)
            for index in 0..<100 { try spool.append(record(index)) }
            spool.sync()
        }
        let reopened = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 1000)
        let records = reopened.peek(limit: 1000).map(\.1)
        #expect(records == (0..<100).map { record($0) })
        // Several segments were used, each 0600 in a 0700 directory.
        let files = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasPrefix("segment-") }
        #expect(files.count > 3)
        let directoryMode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber
        #expect(directoryMode?.intValue == 0o700)
        for file in files {
            let mode = try FileManager.default.attributesOfItem(atPath: path + "/" + file)[.posixPermissions] as? NSNumber
            #expect(mode?.intValue == 0o600)
        }
    }

    @Test func aTornLastRecordIsCutOffAndEverythingBeforeItKept() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20)
            for index in 0..<10 { try spool.append(record(index)) }
        }
        // A crash in the middle of writing record 10: its header and half its payload reached the file.
        let segment = try #require(try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasPrefix("segment-") }.sorted().first)
        let handle = try #require(FileHandle(forWritingAtPath: path + "/" + segment))
        handle.seekToEndOfFile()
        handle.write(Data([0, 0, 0, 40, 1, 2, 3, 4] + record(10).prefix(20)))
        handle.closeFile()

        let reopened = try Spool(directory: path, maxBytes: 1 << 20)
        #expect(reopened.peek(limit: 100).map(\.1) == (0..<10).map { record($0) })
        try reopened.append(record(11))
        #expect(reopened.peek(limit: 100).map(\.1) == (0..<10).map { record($0) } + [record(11)])
    }

    @Test func aCorruptedRecordIsSkippedAndTheRestOfItsSegmentKept() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 500)
            for index in 0..<30 { try spool.append(record(index)) }
        }
        let first = try #require(try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasPrefix("segment-") }.sorted().first)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path + "/" + first))
        bytes[8 + 48 + 10] ^= 0xff  // a byte inside the second record's payload
        try bytes.write(to: URL(fileURLWithPath: path + "/" + first))
        do {
            let reopened = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 500)
            let records = reopened.peek(limit: 100).map(\.1)
            // Only the corrupt record is lost: recovery resynchronises after it, in its segment and the later ones.
            #expect(records == (0..<30).filter { $0 != 1 }.map { record($0) })
            let lost = try #require(reopened.takeCorrupted())
            #expect(lost.records == 1 && lost.bytes == 48)
            #expect(reopened.takeCorrupted() == nil)
        }
        // The segment was rewritten without it: a second opening finds nothing corrupt.
        let again = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 500)
        #expect(again.takeCorrupted() == nil && again.peek(limit: 100).count == 29)
    }

    /// A corrupt length field: the next intact frame is found by its CRC, and the stretch before it counted.
    @Test func aCorruptLengthIsResynchronisedByTheNextIntactFrame() {
        var bytes: [UInt8] = []
        for index in 0..<10 {
            let payload = record(index)
            bytes += [0, 0, 0, UInt8(payload.count)]
            let crc = CRC32.checksum(payload)
            bytes += [UInt8(crc >> 24), UInt8((crc >> 16) & 0xff), UInt8((crc >> 8) & 0xff), UInt8(crc & 0xff)]
            bytes += payload
        }
        bytes[48 * 3 + 1] = 0x7f  // record 3's length: far past the end
        let scan = Spool.scan(bytes)
        #expect(scan.records == 9 && scan.lostRecords == 1 && scan.lostBytes == 48 && scan.firstBad == 48 * 3)
        // A torn tail is cut, not counted as lost.
        let torn = Spool.scan(Array(bytes.prefix(48 * 3)) + [0, 0, 0, 40, 1, 2])
        #expect(torn.records == 3 && torn.lostRecords == 0 && torn.kept.count == 48 * 3)
    }

    @Test func acknowledgedSegmentsAreDeletedAndDeliveryResumes() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 480)
        for index in 0..<50 { try spool.append(record(index)) }
        let firstBatch = spool.peek(limit: 20)
        #expect(firstBatch.map(\.1) == (0..<20).map { record($0) })
        spool.acknowledge(through: firstBatch.last!.0)
        #expect(spool.peek(limit: 5).map(\.1) == (20..<25).map { record($0) })
        let rest = spool.peek(limit: 100)
        spool.acknowledge(through: rest.last!.0)
        #expect(spool.peek(limit: 100).isEmpty)
        let files = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasPrefix("segment-") }
        #expect(files.count == 1)  // only the segment still being written
        try spool.append(record(50))
        #expect(spool.peek(limit: 100).map(\.1) == [record(50)])
    }

    /// Once everything is delivered the spool is empty: its backlog reads zero, and a restart sends nothing again.
    @Test func aDeliveredSpoolIsEmptyAndARestartSendsNothingAgain() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20)
            for index in 0..<7 { try spool.append(record(index)) }
            let all = spool.peek(limit: 100)
            #expect(all.count == 7 && spool.pendingRecords == 7)
            spool.acknowledge(through: all.last!.0)
            #expect(spool.pendingRecords == 0 && spool.totalBytes == 0)
            // Appending after the drain goes on as before.
            try spool.append(record(7))
            #expect(spool.peek(limit: 100).map(\.1) == [record(7)] && spool.pendingRecords == 1)
            spool.acknowledge(through: spool.peek(limit: 100).last!.0)
            spool.sync()
        }
        let reopened = try Spool(directory: path, maxBytes: 1 << 20)
        #expect(reopened.peek(limit: 100).isEmpty && reopened.pendingRecords == 0)
    }

    @Test func theCapDropsTheOldestAndCountsTheLoss() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 2000, segmentBytes: 480)
        for index in 0..<100 { try spool.append(record(index)) }
        #expect(spool.totalBytes <= 2000)
        let kept = spool.peek(limit: 1000).map(\.1)
        #expect(kept.last == record(99))
        let drops = try #require(spool.takeDropped())
        #expect(drops.records + kept.count == 100)
        #expect(drops.records > 0)
        #expect(kept == (drops.records..<100).map { record($0) })
        #expect(spool.takeDropped() == nil)
    }

    @Test func dropsCountOnlyUndeliveredRecordsAndTheirTimeRange() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 2000, segmentBytes: 480)
        func action(_ index: Int) -> [UInt8] {
            Array(#"{"metadata":{"started_at":"2026-11-26T10:00:\#(String(format: "%02d", index % 60)).000Z"}}"#.utf8)
        }
        for index in 0..<5 { try spool.append(action(index)) }
        // Two of the oldest segment's records were delivered: a later drop must not count them.
        let delivered = spool.peek(limit: 2)
        spool.acknowledge(through: delivered[1].0)
        for index in 5..<60 { try spool.append(action(index)) }
        let drops = try #require(spool.takeDropped())
        let kept = spool.peek(limit: 1000).map(\.1)
        #expect(drops.records + kept.count == 58)
        #expect(drops.oldestStartedAt == "2026-11-26T10:00:02.000Z")
        #expect(drops.newestStartedAt == "2026-11-26T10:00:\(String(format: "%02d", drops.records + 1)).000Z")
        #expect(kept.first == action(drops.records + 2))
    }

    @Test func peekReadsAcrossChunksAndRecordsLargerThanAChunk() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 64 << 20, segmentBytes: 8 << 20)
        // 300 KiB and 1 MiB records straddle and exceed peek's 256 KiB read.
        let sizes = [100, 300 * 1024, 40, 1 << 20, 70_000, 70_000, 70_000, 70_000, 12]
        for (index, size) in sizes.enumerated() { try spool.append(record(index, size: size)) }
        var seen: [[UInt8]] = []
        for _ in 0..<20 {
            let batch = spool.peek(limit: 2)
            guard let last = batch.last else { break }
            seen += batch.map(\.1)
            spool.acknowledge(through: last.0)
        }
        #expect(seen == sizes.enumerated().map { record($0.offset, size: $0.element) })
    }

    @Test func segmentsScaleWithTheCap() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 1 << 20)
        for index in 0..<5000 { try spool.append(record(index, size: 500)) }
        #expect(spool.totalBytes <= 1 << 20)
        let drops = try #require(spool.takeDropped())
        // An eighth of the cap per segment: a drop loses a small slice, not the whole backlog.
        #expect(drops.records + spool.peek(limit: 10_000).count == 5000)
        #expect(spool.peek(limit: 10_000).count > 1500)
    }

    @Test func aBatchSpanningSegmentsIsKeptInOrder() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 1000)
            let last = try spool.append(contentsOf: (0..<100).map { record($0) })
            #expect(spool.peek(limit: 1000).last?.0 == last)
            spool.sync()
        }
        let reopened = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 1000)
        #expect(reopened.peek(limit: 1000).map(\.1) == (0..<100).map { record($0) })
        #expect(try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasPrefix("segment-") }.count > 3)
    }

    @Test func crcMatchesTheStandardCheckValue() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
    }
}

extension SpoolTests {
    /// Records done out of order (accepted behind one still to send) are never read again, are not counted when
    /// dropped, and the read position moves over them once the one before them is done.
    @Test func recordsSettledOutOfOrderAreSkippedAndPassedOver() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 1 << 20)
        for index in 0..<6 { try spool.append(record(index)) }
        let all = spool.peek(limit: 100)
        for entry in all[1...3] { spool.settle(entry.0) }
        #expect(spool.peek(limit: 100).map(\.1) == [record(0), record(4), record(5)])
        #expect(spool.pendingRecords == 3)
        spool.acknowledge(through: all[0].0)
        #expect(spool.front == all[3].0)
        #expect(spool.peek(limit: 100).map(\.1) == [record(4), record(5)])
        spool.acknowledge(through: all[5].0)
        #expect(spool.pendingRecords == 0 && spool.totalBytes == 0)
    }

    @Test func aDropDoesNotCountRecordsAlreadySettled() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 2000, segmentBytes: 480)
        for index in 0..<5 { try spool.append(record(index)) }
        let first = spool.peek(limit: 5)
        for entry in first[1...4] { spool.settle(entry.0) }  // all but the oldest accepted
        spool.release()  // the round is over: the oldest is to be sent again
        for index in 5..<100 { try spool.append(record(index)) }
        let drops = try #require(spool.takeDropped())
        let kept = spool.peek(limit: 1000)
        #expect(drops.records + kept.count == 96, "\(drops.records) dropped, \(kept.count) kept")
    }
}

extension SpoolTests {
    @Test func aSecondSpoolOnTheSameDirectoryIsRefusedUntilTheFirstCloses() throws {
        let path = directory()
        var first: Spool? = try Spool(directory: path, maxBytes: 1 << 20)
        try first?.append(record(0))
        do {
            _ = try Spool(directory: path, maxBytes: 1 << 20)
            Issue.record("a second spool opened the directory")
        } catch {
            #expect(error.inUse && error.description.contains("used by another kaizen-egress process"))
        }
        // The refused one deleted nothing: the first's record is still there.
        #expect(first?.peek(limit: 10).map(\.1) == [record(0)])
        first = nil
        let reopened = try Spool(directory: path, maxBytes: 1 << 20)
        #expect(reopened.peek(limit: 10).map(\.1) == [record(0)])
    }
}

extension SpoolTests {
    /// A gap record dropped in its turn (a long outage): the count it carried goes into the next gap record, and
    /// it is no dropped action itself.
    @Test func aDroppedGapRecordsCountIsCarriedIntoTheNextDrop() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 2000, segmentBytes: 480)
        func action(_ index: Int) -> [UInt8] {
            Array(#"{"metadata":{"started_at":"2026-11-26T10:00:\#(String(format: "%02d", index % 60)).000Z"}}"#.utf8)
        }
        var json = JSONWriter()
        DroppedActionsRecord(
            agent: "a",
            drops: .init(records: 100, bytes: 5000, firstAt: 0, lastAt: 0, oldestStartedAt: "2026-11-26T09:00:00.000Z",
                         newestStartedAt: "2026-11-26T09:59:00.000Z")
        ).writeJSON(to: &json)
        try spool.append(json.take())
        for index in 0..<60 { try spool.append(action(index)) }
        let drops = try #require(spool.takeDropped())
        let kept = spool.peek(limit: 1000)
        #expect(drops.carried == 100)
        #expect(drops.newlyDropped + kept.count == 60, "\(drops.newlyDropped) dropped, \(kept.count) kept")
        #expect(drops.records == 100 + drops.newlyDropped)
        #expect(drops.oldestStartedAt == "2026-11-26T09:00:00.000Z")
        #expect(drops.bytes > 5000)
    }
}

extension SpoolTests {
    /// How far delivery got survives a restart: what the control plane accepted is not sent again.
    @Test func theDeliveredPositionSurvivesARestart() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 480)
            for index in 0..<30 { try spool.append(record(index)) }
            let batch = spool.peek(limit: 14)
            spool.acknowledge(through: batch.last!.0)
            spool.sync()
        }
        do {
            let reopened = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 480)
            #expect(reopened.peek(limit: 100).map(\.1) == (14..<30).map { record($0) })
            #expect(reopened.pendingRecords == 16)
            reopened.acknowledge(through: reopened.peek(limit: 2).last!.0)
            reopened.sync()
        }
        let again = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 480)
        #expect(again.peek(limit: 100).map(\.1) == (16..<30).map { record($0) })
    }

    /// A position that is not a frame's end (a stale or damaged file) is ignored: everything is sent.
    @Test func aDeliveredPositionThatIsNoFrameEndIsIgnored() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20)
            for index in 0..<5 { try spool.append(record(index)) }
            spool.acknowledge(through: spool.peek(limit: 2).last!.0)
            spool.sync()
        }
        // Move the saved offset by one byte and fix its CRC: a well-formed file naming no frame's end.
        let file = path + "/delivered"
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        bytes[15] &+= 1
        let crc = CRC32.checksum(Array(bytes[0..<16]))
        bytes[16..<20] = [UInt8(crc >> 24), UInt8((crc >> 16) & 0xff), UInt8((crc >> 8) & 0xff), UInt8(crc & 0xff)]
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        let reopened = try Spool(directory: path, maxBytes: 1 << 20)
        #expect(reopened.peek(limit: 100).map(\.1) == (0..<5).map { record($0) })
    }
}

extension SpoolTests {
    /// Zeros are no frames (length 0 with CRC 0 would pass as an empty record): a zero-filled tail (a power loss)
    /// is cut as a torn tail, and a zeroed block with intact frames after it is counted as corruption.
    @Test func zerosAreATornTailOrCorruptionNeverEmptyRecords() throws {
        var bytes: [UInt8] = []
        for index in 0..<10 {
            let payload = record(index)
            bytes += [0, 0, 0, UInt8(payload.count)]
            let crc = CRC32.checksum(payload)
            bytes += [UInt8(crc >> 24), UInt8((crc >> 16) & 0xff), UInt8((crc >> 8) & 0xff), UInt8(crc & 0xff)]
            bytes += payload
        }
        #expect(Spool.frame(in: [UInt8](repeating: 0, count: 16), at: 0) == nil)
        let tail = Spool.scan(bytes + [UInt8](repeating: 0, count: 4096))
        #expect(tail.records == 10 && tail.lostRecords == 0 && tail.kept == bytes)
        var zeroed = bytes
        for index in (48 * 2)..<(48 * 4) { zeroed[index] = 0 }  // records 2 and 3 zeroed
        let block = Spool.scan(zeroed)
        #expect(block.records == 8 && block.lostRecords == 2 && block.lostBytes == 96)

        // On disk: a zero-filled tail after the last record is cut; nothing empty is read.
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20)
            for index in 0..<5 { try spool.append(record(index)) }
        }
        let segment = try #require(try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasPrefix("segment-") }.sorted().first)
        let handle = try #require(FileHandle(forWritingAtPath: path + "/" + segment))
        handle.seekToEndOfFile()
        handle.write(Data(count: 8192))
        handle.closeFile()
        let reopened = try Spool(directory: path, maxBytes: 1 << 20)
        #expect(reopened.peek(limit: 1000).map(\.1) == (0..<5).map { record($0) })
        #expect(throws: Spool.Failure.self) { try reopened.append([]) }
    }
}

extension SpoolTests {
    /// A batch written up to a segment rotation that then fails: the failure says how many were written, and only
    /// the rest is tried again, so none is written twice and none written is counted as lost.
    @Test func aBatchThatFailsPartwayReportsWhatWasWrittenAndOnlyTheRestIsRetried() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 480)
        // The next segment's name is taken: the rotation after 10 records (480 bytes) cannot create it.
        let blocker = path + "/segment-0000000000000002.log"
        #expect(FileManager.default.createFile(atPath: blocker, contents: nil))
        do {
            try spool.append(contentsOf: (0..<25).map { record($0) })
            Issue.record("the rotation did not fail")
        } catch {
            #expect(error.written == 10)
        }
        #expect(spool.peek(limit: 100).map(\.1) == (0..<10).map { record($0) })

        let second = try Spool(directory: directory(), maxBytes: 1 << 20, segmentBytes: 480)
        #expect(FileManager.default.createFile(atPath: second.directory + "/segment-0000000000000002.log", contents: nil))
        let (lost, failure) = second.appendKeepingWhatFits((0..<25).map { record($0) })
        #expect(failure != nil && lost == Array(10..<25))
        #expect(second.peek(limit: 100).map(\.1) == (0..<10).map { record($0) })
    }
}

extension SpoolTests {
    /// A drained spool never writes new records at offsets it used before: a `delivered` file a crash of the machine
    /// left stale (an older position in the drained segment) cannot make a restart skip new records.
    @Test func aStaleDeliveredPositionNeverSkipsRecordsWrittenAfterADrain() throws {
        let path = directory()
        let stale: Data
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20)
            for index in 0..<3 { try spool.append(record(index)) }
            let all = spool.peek(limit: 10)
            spool.acknowledge(through: all[1].0)
            spool.sync()
            stale = try Data(contentsOf: URL(fileURLWithPath: path + "/delivered"))
            spool.acknowledge(through: all[2].0)
            for index in 10..<15 { try spool.append(record(index)) }
            spool.sync()
        }
        // The machine crashed before the last acknowledgements reached the disk.
        try stale.write(to: URL(fileURLWithPath: path + "/delivered"))
        let reopened = try Spool(directory: path, maxBytes: 1 << 20)
        #expect(reopened.peek(limit: 100).map(\.1) == (10..<15).map { record($0) })
    }
}

extension SpoolTests {
    /// Only a position in the spool is kept as settled ahead: a stale one (its segment gone) is not counted.
    @Test func settlingAPositionNotInTheSpoolKeepsNothing() throws {
        let spool = try Spool(directory: directory(), maxBytes: 1 << 20)
        for index in 0..<3 { try spool.append(record(index)) }
        let all = spool.peek(limit: 10)
        spool.settle(Spool.Position(segment: all[0].0.segment + 5, endOffset: 48))
        spool.settle(Spool.Position(segment: all[0].0.segment, endOffset: 10_000))
        #expect(spool.pendingRecords == 3)
    }
}

extension SpoolTests {
    /// The cap dropping the segment being sent counts only the records in flight that turn out not accepted: the
    /// gap records then add up to exactly what was lost.
    @Test func recordsInFlightThatTheCapDropsCountOnlyIfNotAccepted() throws {
        let spool = try Spool(directory: directory(), maxBytes: 2000, segmentBytes: 480)
        for index in 0..<10 { try spool.append(record(index)) }
        let batch = spool.peek(limit: 5)
        for index in 10..<100 { try spool.append(record(index)) }
        let whileSending = try #require(spool.takeDropped())
        spool.acknowledge(through: batch[2].0)  // 0, 1, 2 accepted; 3 and 4 to be sent again
        spool.release()
        let afterAnswers = try #require(spool.takeDropped())
        #expect(afterAnswers.records == 2)
        let kept = spool.peek(limit: 1000).count
        #expect(whileSending.records + afterAnswers.records + kept == 97, "\(whileSending.records) + \(afterAnswers.records) + \(kept)")
    }
}

extension SpoolTests {
    /// A removed directory loses what it held counted as the cap counts it: a gap record is no action, and the
    /// count it carried goes on into the next gap record.
    @Test func aRemovedDirectoryCountsGapRecordsAsTheActionsTheyCarried() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 1 << 20)
        var json = JSONWriter()
        DroppedActionsRecord(agent: "a", drops: .init(records: 100, bytes: 5000, firstAt: 0, lastAt: 0)).writeJSON(to: &json)
        try spool.append(json.take())
        for index in 0..<5 { try spool.append(record(index)) }
        try FileManager.default.removeItem(atPath: path)
        let lost = try #require(try spool.recreateIfRemoved())
        #expect(lost.records == 105 && lost.carried == 100 && lost.newlyDropped == 5)
    }
}

extension SpoolTests {
    /// A record too large for the spool in the middle of a batch: nothing of the batch is counted or written, and
    /// appending goes on as before (the others are then kept one by one).
    @Test func anOversizedRecordInABatchChangesNothing() throws {
        let spool = try Spool(directory: directory(), maxBytes: 64 << 20)
        let huge = [UInt8](repeating: 0x20, count: Spool.maximumRecord + 1)
        #expect(throws: Spool.Failure.self) { try spool.append(contentsOf: [record(0), huge, record(2)]) }
        #expect(spool.totalBytes == 0 && spool.pendingRecords == 0)
        try spool.append(record(3))
        #expect(spool.peek(limit: 10).map(\.1) == [record(3)] && spool.pendingRecords == 1)
        let (lost, _) = spool.appendKeepingWhatFits([record(4), huge, record(5)])
        #expect(lost == [1] && spool.peek(limit: 10).map(\.1) == [record(3), record(4), record(5)])
    }
}

extension SpoolTests {
    /// A frame found corrupt by a read (a disk fault after the spool was opened) is resynchronised past as recovery
    /// does: only the corrupt frame is lost, and counted at once; the intact records after it in its segment are
    /// delivered.
    @Test func aFrameFoundCorruptByAReadIsSkippedAndCounted() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 480)
        for index in 0..<30 { try spool.append(record(index)) }
        let second = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasPrefix("segment-") }.sorted()[1]
        let handle = try #require(FileHandle(forUpdatingAtPath: path + "/" + second))
        handle.seek(toFileOffset: 2 * 48)
        handle.write(Data([0x7f, 0xff, 0xff, 0xff]))  // record 12's length: past the end
        handle.closeFile()
        let batch = spool.peek(limit: 100)
        #expect(batch.map(\.1) == (0..<30).filter { $0 != 12 }.map { record($0) })
        let lost = try #require(spool.takeCorrupted())
        #expect(lost.records == 1 && lost.bytes == 48)
        // Read again, the stretch is skipped without being counted twice.
        #expect(spool.peek(limit: 100).map(\.1) == batch.map(\.1))
        spool.acknowledge(through: batch.last!.0)
        #expect(spool.takeCorrupted() == nil)
        #expect(spool.pendingRecords == 0)
    }

    /// A corrupt frame found at the read position, in the segment still being written, with the records after it
    /// answered out of order: the read position moves over the corrupt bytes once the record after them is done,
    /// later appends are read, and a drop by the cap counts the intact records after it, not the corrupt bytes again.
    @Test func aCorruptFrameAtTheFrontIsPassedOverOnceTheRecordsAfterItAreDone() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 1 << 20)
        for index in 0..<6 { try spool.append(record(index)) }
        let segment = try #require(try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasPrefix("segment-") }.sorted().last)
        let handle = try #require(FileHandle(forUpdatingAtPath: path + "/" + segment))
        handle.seek(toFileOffset: 8 + 3)
        handle.write(Data([0x00]))  // a byte of record 0's payload: its CRC no longer matches, its header is intact
        handle.closeFile()
        let batch = spool.peek(limit: 3)
        try #require(batch.map(\.1) == [record(1), record(2), record(3)])
        #expect(spool.takeCorrupted()?.records == 1)
        spool.settle(batch[1].0)  // record 2 accepted, record 1 to be sent again
        spool.release()
        try spool.append(record(6))
        #expect(spool.peek(limit: 100).map(\.1) == [record(1), record(3), record(4), record(5), record(6)])
        spool.acknowledge(through: batch[0].0)  // record 1 done: the front passes the corrupt bytes and record 2
        #expect(spool.front == batch[1].0)
        let rest = spool.peek(limit: 100)
        #expect(rest.map(\.1) == [record(3), record(4), record(5), record(6)])
        spool.acknowledge(through: rest.last!.0)
        #expect(spool.pendingRecords == 0 && spool.totalBytes == 0 && spool.takeCorrupted() == nil)
    }

    /// A corrupt frame the cap's read finds first (a segment dropped before delivery read it): the intact records
    /// after it count as dropped, the corrupt one as corrupted, each once.
    @Test func aCorruptFrameInADroppedSegmentIsCountedOnceAndTheRestAsDropped() throws {
        let path = directory()
        let spool = try Spool(directory: path, maxBytes: 2000, segmentBytes: 480)
        for index in 0..<10 { try spool.append(record(index)) }
        let first = try #require(try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasPrefix("segment-") }.sorted().first)
        let handle = try #require(FileHandle(forUpdatingAtPath: path + "/" + first))
        handle.seek(toFileOffset: 48 * 4 + 8 + 3)
        handle.write(Data([0x00]))  // inside record 4's payload
        handle.closeFile()
        for index in 10..<60 { try spool.append(record(index)) }
        let dropped = try #require(spool.takeDropped())
        let corrupt = try #require(spool.takeCorrupted())
        #expect(corrupt.records == 1 && corrupt.bytes == 48)
        let kept = spool.peek(limit: 1000).count
        #expect(dropped.records + corrupt.records + kept == 60, "\(dropped.records) dropped, \(kept) kept")
    }
}

extension SpoolTests {
    /// Flips a byte of record `index`'s payload (all records `record(_:)`-sized, 48 bytes framed) in the segment file.
    func corrupt(recordAt index: Int, in path: String, segment: Int = 0) throws {
        let file = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasPrefix("segment-") }.sorted()[segment]
        let handle = try #require(FileHandle(forUpdatingAtPath: path + "/" + file))
        handle.seek(toFileOffset: UInt64(index * 48 + 8 + 3))
        handle.write(Data([0x00]))
        handle.closeFile()
    }

    /// A corrupt frame before the delivered position: recovery rewrites the segment without it, so the frames after it
    /// move and the saved offset would name a later record, skipping those between unsent. The segment is sent again
    /// from its start instead (duplicates, which the event id marks; never a loss).
    @Test func aDeliveredPositionInASegmentRecoveryRewroteSkipsNothing() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20)
            for index in 0..<10 { try spool.append(record(index)) }
            spool.acknowledge(through: spool.peek(limit: 5).last!.0)  // 0 to 4 delivered
            spool.sync()
        }
        try corrupt(recordAt: 1, in: path)
        let reopened = try Spool(directory: path, maxBytes: 1 << 20)
        #expect(reopened.takeCorrupted()?.records == 1)
        let records = reopened.peek(limit: 100).map(\.1)
        #expect(records == (0..<10).filter { $0 != 1 }.map { record($0) })
        #expect(records.contains(record(5)))
    }

    /// A corrupt frame after the delivered position moves nothing before it: delivery resumes where it was.
    @Test func aDeliveredPositionBeforeTheCorruptFrameStillHolds() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20)
            for index in 0..<10 { try spool.append(record(index)) }
            spool.acknowledge(through: spool.peek(limit: 5).last!.0)
            spool.sync()
        }
        try corrupt(recordAt: 7, in: path)
        let reopened = try Spool(directory: path, maxBytes: 1 << 20)
        #expect(reopened.peek(limit: 100).map(\.1) == [5, 6, 8, 9].map { record($0) })
    }
}

extension SpoolTests {
    func settledFileSize(_ path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path + "/settled")[.size] as? NSNumber)?.intValue ?? -1
    }

    /// Records done out of order (accepted behind one still to send) are saved beside the delivered position: a
    /// restart does not send them again, and passes over them once the one before them is done.
    @Test func recordsSettledOutOfOrderAreNotSentAgainAfterARestart() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 480)
            for index in 0..<16 { try spool.append(record(index)) }
            let all = spool.peek(limit: 100)
            spool.acknowledge(through: all[1].0)  // 0 and 1 delivered in order
            for index in [3, 4, 5, 11, 12] { spool.settle(all[index].0) }  // 2 and 6 still to send
            spool.release()
            spool.sync()
        }
        do {
            let reopened = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 480)
            let pending = reopened.peek(limit: 100)
            #expect(pending.map(\.1) == [2, 6, 7, 8, 9, 10, 13, 14, 15].map { record($0) })
            #expect(reopened.pendingRecords == 9)
            reopened.acknowledge(through: pending[0].0)  // 2 done: the read position passes 3, 4 and 5
            #expect(reopened.peek(limit: 2).map(\.1) == [record(6), record(7)])
            reopened.sync()
        }
        let again = try Spool(directory: path, maxBytes: 1 << 20, segmentBytes: 480)
        let rest = again.peek(limit: 100)
        #expect(rest.map(\.1) == [6, 7, 8, 9, 10, 13, 14, 15].map { record($0) })
        // Once the read position has passed every settled record, the file is emptied.
        again.acknowledge(through: rest.last!.0)
        #expect(try settledFileSize(path) == 0 && again.pendingRecords == 0)
        let mode = try FileManager.default.attributesOfItem(atPath: path + "/settled")[.posixPermissions] as? NSNumber
        #expect(mode?.intValue == 0o600)
    }

    /// A saved settled position is trusted only where it still names the record that was done: not in a segment that
    /// recovery rewrote past the corrupt frame (its records moved), not in a segment gone, not a torn entry. Those
    /// records are sent again (duplicates), never skipped unsent; stale entries are dropped from the file at start.
    @Test func aSettledPositionThatNoLongerHoldsIsNotTrusted() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20)
            for index in 0..<6 { try spool.append(record(index)) }
            let all = spool.peek(limit: 100)
            for index in [3, 4] { spool.settle(all[index].0) }
            spool.sync()
        }
        // A torn entry after them (a crash mid-append), and the segment damaged before them.
        let handle = try #require(FileHandle(forUpdatingAtPath: path + "/settled"))
        handle.seekToEndOfFile()
        handle.write(Data([0, 0, 0, 0, 0, 0, 0, 1, 0, 0]))
        handle.closeFile()
        try corrupt(recordAt: 1, in: path)
        let reopened = try Spool(directory: path, maxBytes: 1 << 20)
        #expect(reopened.peek(limit: 100).map(\.1) == [0, 2, 3, 4, 5].map { record($0) })
        #expect(try settledFileSize(path) == 0)
    }

    /// Settled after a corrupt frame behind them: positions before the frame still hold and are kept.
    @Test func aSettledPositionBeforeARewrittenFrameStillHolds() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20)
            for index in 0..<8 { try spool.append(record(index)) }
            let all = spool.peek(limit: 100)
            for index in [2, 3] { spool.settle(all[index].0) }
            spool.sync()
        }
        try corrupt(recordAt: 6, in: path)
        let reopened = try Spool(directory: path, maxBytes: 1 << 20)
        #expect(reopened.peek(limit: 100).map(\.1) == [0, 1, 4, 5, 7].map { record($0) })
        #expect(try settledFileSize(path) == 40)
    }
}

extension SpoolTests {
    /// Recovery rewrites a segment without a corrupt frame, so the frames after it move. The saved positions past it
    /// (`delivered`, `settled`) are taken out on the disk before the rewrite: the files as they are the moment the
    /// rewritten segment is in place (a crash of the machine then) must not make the next start, which finds nothing
    /// to repair, skip records never sent.
    @Test func aCrashRightAfterRecoveryRewroteASegmentSkipsNothing() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20)
            for index in 0..<8 { try spool.append(record(index)) }
            let all = spool.peek(limit: 100)
            spool.acknowledge(through: all[2].0)  // 0 to 2 delivered
            for index in [5, 6] { spool.settle(all[index].0) }  // accepted out of order; 3, 4 and 7 still to send
            spool.release()
            spool.sync()
        }
        try corrupt(recordAt: 1, in: path)
        // Every file of the directory at the moment the rewritten segment replaced the damaged one.
        let snapshot = Locked<[String: Data]?>(nil)
        let token = FileIO.addObserver { event in
            guard case .replaced(let file) = event, file.hasPrefix(path + "/segment-") else { return }
            let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            var files: [String: Data] = [:]
            for name in names { files[name] = FileManager.default.contents(atPath: path + "/" + name) }
            snapshot.withLock { if $0 == nil { $0 = files } }
        }
        do {
            defer { FileIO.removeObserver(token) }
            let reopened = try Spool(directory: path, maxBytes: 1 << 20)
            #expect(reopened.takeCorrupted()?.records == 1)
            #expect(reopened.peek(limit: 100).map(\.1) == [0, 2, 3, 4, 5, 6, 7].map { record($0) })
        }
        let files = try #require(snapshot.withLock { $0 })
        #expect(files.keys.contains { $0.hasPrefix("segment-") })
        // The machine restarts with the directory as it was then.
        let crashed = directory()
        try FileManager.default.createDirectory(atPath: crashed, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        for (name, data) in files where !name.hasSuffix(".tmp") {
            #expect(FileManager.default.createFile(atPath: crashed + "/" + name, contents: data, attributes: [.posixPermissions: 0o600]))
        }
        let restarted = try Spool(directory: crashed, maxBytes: 1 << 20)
        #expect(restarted.takeCorrupted() == nil)  // nothing left to repair: only the files say what moved
        let pending = restarted.peek(limit: 100).map(\.1)
        #expect(pending.contains(record(3)) && pending.contains(record(4)) && pending.contains(record(7)), "never sent, must not be skipped")
        #expect(pending == [0, 2, 3, 4, 5, 6, 7].map { record($0) })
    }

    /// A write of a settled entry that fails partway (a full disk) is cut back to the last whole entry: the entries
    /// written after it stay readable, so their records are still not sent again after a restart.
    @Test func aSettledEntryWrittenOnlyInPartIsCutBack() throws {
        let path = directory()
        do {
            let spool = try Spool(directory: path, maxBytes: 1 << 20)
            for index in 0..<10 { try spool.append(record(index)) }
            let all = spool.peek(limit: 100)
            spool.settle(all[3].0)
            spool.writeSettled = { fd, bytes in
                _ = FileIO.writeFully(fd, UnsafeRawBufferPointer(rebasing: bytes.prefix(7)))
                return ENOSPC
            }
            spool.settle(all[5].0)  // 7 bytes of its entry written, then the disk is full
            spool.writeSettled = FileIO.writeFully
            spool.settle(all[7].0)
            spool.release()
            spool.sync()
            #expect(try settledFileSize(path) == 40)
        }
        let reopened = try Spool(directory: path, maxBytes: 1 << 20)
        // 5's entry was lost (sent again: a duplicate); 3 and 7 are still known done.
        #expect(reopened.peek(limit: 100).map(\.1) == [0, 1, 2, 4, 5, 6, 8, 9].map { record($0) })
    }
}

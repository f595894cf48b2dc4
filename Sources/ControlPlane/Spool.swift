#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A write-ahead spool of records on disk: what could not be delivered yet survives a restart or a crash.
///
/// Records are appended to segment files (`segment-<sequence>.log`, mode 0600, in a 0700 directory) as
/// frames of `length (u32 BE) | CRC-32 (u32 BE) | payload`. Opening the spool checks every frame: a torn
/// last record (a crash mid-write) is cut off, so everything written before it is kept; a corrupt frame with
/// intact ones after it (a disk fault) is skipped, the segment rewritten without it, and the loss counted
/// (`takeCorrupted`); one found by a read later is skipped the same way (resynchronising at the next intact frame)
/// and counted as it is found. One process uses a spool directory at a time (an flock on its `lock` file). Delivery reads from
/// the oldest record on; acknowledged segments are deleted. How far delivery got (`delivered`) and the records done
/// out of order ahead of that (`settled`) survive a restart. When the spool would exceed its cap, the oldest
/// segments are dropped and the loss is counted, so it can be reported.
///
/// One owner (the reporter's task) uses it; it is not thread-safe.
public final class Spool {
    /// Where a record is: its segment and the offset just past it.
    public struct Position: Sendable, Hashable, Comparable {
        public var segment: UInt64
        public var endOffset: Int64

        public static func < (a: Position, b: Position) -> Bool {
            (a.segment, a.endOffset) < (b.segment, b.endOffset)
        }
    }

    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var description: String
        /// Another process holds the spool directory's lock.
        public var inUse = false
        /// For `append(contentsOf:)`: how many of the payloads, from the first, were written before it failed
        /// (a batch may be flushed up to a segment rotation that then fails). Those are in the spool.
        public var written = 0
    }

    /// Records lost to the cap since the last `takeDropped()`.
    public struct Drops: Sendable, Hashable {
        /// Actions lost: those dropped now, and those earlier gap records that were dropped now had counted.
        public var records: Int
        /// Of `records`, those counted by dropped gap records (already counted as dropped when they were made).
        public var carried: Int = 0
        /// Actions dropped now (not counting those carried over from dropped gap records).
        public var newlyDropped: Int { records - carried }
        public var bytes: Int64
        /// Wall-clock milliseconds of the first and last drop.
        public var firstAt: UInt64
        public var lastAt: UInt64
        /// The `started_at` of the oldest and newest action lost.
        public var oldestStartedAt: String?
        public var newestStartedAt: String?

        public init(
            records: Int, bytes: Int64, firstAt: UInt64, lastAt: UInt64,
            oldestStartedAt: String? = nil, newestStartedAt: String? = nil
        ) {
            self.records = records
            self.bytes = bytes
            self.firstAt = firstAt
            self.lastAt = lastAt
            self.oldestStartedAt = oldestStartedAt
            self.newestStartedAt = newestStartedAt
        }
    }

    private struct Segment {
        var sequence: UInt64
        var bytes: Int64
        var records: Int
        /// Of `records`, the gap records, and the actions they count (for a loss counted without reading the
        /// segment: a removed directory).
        var gaps = 0
        var gapActions = 0
    }

    private static let headerLength = 8
    /// How much `peek` reads at a time.
    private static let readChunk: Int64 = 256 * 1024
    /// No single record is larger than this (a bigger length field means a corrupt frame).
    public static let maximumRecord = 16 * 1024 * 1024

    public let directory: String
    private let maxBytes: Int64
    private let segmentBytes: Int64
    private var segments: [Segment] = []  // oldest first; the last one is written to
    private var writeFD: Int32 = -1
    /// The `lock` file's descriptor, holding its flock for as long as the spool is open: a second process on
    /// the same directory would delete segments this one is writing and send the same records.
    private var lockFD: Int32 = -1
    /// The next record to deliver.
    private var readSegment: UInt64 = 0
    private var readOffset: Int64 = 0
    private var drops: Drops?
    /// Records lost to corrupt frames, found when the spool was opened.
    private var corrupted: Drops?
    /// Records past the read position already done (accepted, or set aside) while one before them was not: `peek`
    /// skips them, a drop does not count them, and the read position moves over them once it reaches them.
    private var settledAhead: Set<Position> = []
    /// The records the last `peek` returned (being sent): one the cap drops is not counted lost until its answer
    /// says it was not accepted, since the control plane may accept it all the same.
    private var inFlight: Set<Position> = []
    /// In-flight records the cap dropped, with what each would count as lost.
    private var droppedInFlight: [Position: Loss] = [:]

    /// What one dropped record counts as lost: an action, or the count an earlier gap record carried.
    private struct Loss {
        var records: Int
        var carried: Int
        var bytes: Int
        var first: String?
        var last: String?
    }

    /// The read position: everything up to it is done.
    public var front: Position { Position(segment: readSegment, endOffset: readOffset) }

    public var totalBytes: Int64 { segments.reduce(0) { $0 + $1.bytes } }
    public var pendingRecords: Int {
        // Approximate for the segment being read: whole-segment counts.
        max(0, segments.filter { $0.sequence >= readSegment }.reduce(0) { $0 + $1.records } - settledAhead.count)
    }

    /// Opens (creating it, mode 0700) the spool directory and checks what is in it.
    /// - Parameter segmentBytes: the size at which a new segment file is started; by default an eighth of
    ///   the cap, between 64 KiB and 4 MiB, so dropping the oldest segment loses a small part of the backlog.
    public init(directory: String, maxBytes: Int64, segmentBytes: Int64? = nil) throws(Failure) {
        let segmentBytes = segmentBytes ?? min(4 * 1024 * 1024, max(64 * 1024, maxBytes / 8))
        self.directory = directory
        self.maxBytes = max(maxBytes, segmentBytes)
        self.segmentBytes = segmentBytes
        try Self.createDirectory(directory)
        lockFD = try Self.lock(directory)
        directoryIdentity = Self.identity(of: directory)
        try recover()
        readSegment = segments.first?.sequence ?? 0
        readOffset = 0
        let saved = readDelivered()
        if let saved { adoptDelivered(saved) }
        let savedSettled = readSettled()
        adoptSettled(savedSettled)
        // Numbers never go back, so a position saved by an earlier run can never name a later run's segment.
        try openWriteSegment(
            sequence: max(segments.last?.sequence ?? 0, saved?.segment ?? 0, savedSettled.map(\.segment).max() ?? 0) + 1)
        deliveredFD = open(directory + "/delivered", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        saveDelivered()
        openSettledFile()
        rewriteSettledFile()  // only what still holds: a stale entry never outlives the start that found it stale
    }

    // MARK: the delivered position

    /// `delivered`: the read position (segment and offset, u64 BE each, then their CRC-32), rewritten in place
    /// at every acknowledgement and made durable with the spool's `sync()`, so a restart does not send again
    /// what the control plane already accepted. A crash of the machine before a sync may lose the last few
    /// acknowledgements: those actions are sent again (their `event_id` marks the duplicate).
    private var deliveredFD: Int32 = -1
    private var savedPosition: Position?
    private var deliveredDirty = false

    private func saveDelivered() {
        guard deliveredFD >= 0, savedPosition != front else { return }
        let bytes = Self.deliveredBytes(front)
        let written = bytes.withUnsafeBytes { pwrite(deliveredFD, $0.baseAddress, $0.count, 0) }
        if written == bytes.count {
            savedPosition = front
            deliveredDirty = true
        }
    }

    /// What `delivered` holds for `position` (the same layout as a `settled` entry).
    private static func deliveredBytes(_ position: Position) -> [UInt8] {
        settledEntry(position)
    }

    private func readDelivered() -> Position? {
        let fd = open(directory + "/delivered", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 20)
        guard bytes.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, 20, 0) }) == 20,
            CRC32.checksum(Array(bytes[0..<16])) == Self.bigEndian32(bytes, 16)
        else { return nil }
        let segment = UInt64(Self.bigEndian32(bytes, 0)) << 32 | UInt64(Self.bigEndian32(bytes, 4))
        let offset = UInt64(Self.bigEndian32(bytes, 8)) << 32 | UInt64(Self.bigEndian32(bytes, 12))
        return Position(segment: segment, endOffset: Int64(clamping: offset))
    }

    /// Starts reading at a saved position when it is the end of a frame in a segment still here; segments before
    /// it were delivered (a crash came between the acknowledgement and their deletion) and are deleted.
    private func adoptDelivered(_ saved: Position) {
        if !holds(saved), let index = segments.firstIndex(where: { $0.sequence == saved.segment }) {
            // Recovery rewrote it without a corrupt frame before this offset: the frames after that moved, so the
            // offset may now name a later record, and those between would be skipped unsent. The segments before it
            // were delivered; it is sent again from its start.
            for segment in segments[..<index] { unlink(path(segment.sequence)) }
            segments.removeFirst(index)
            readSegment = saved.segment
            readOffset = 0
            return
        }
        guard let index = segments.firstIndex(where: { $0.sequence == saved.segment }),
            saved.endOffset <= segments[index].bytes,
            let bytes = readRange(sequence: saved.segment, from: 0, length: Int(saved.endOffset))
        else { return }
        var cursor = 0
        var records = 0
        var gaps = 0
        var gapActions = 0
        while cursor < Int(saved.endOffset), let (payload, next) = Self.frame(in: bytes, at: cursor) {
            cursor = next
            records += 1
            if let gap = Self.gapCounts(in: payload) {
                gaps += 1
                gapActions += gap.actions
            }
        }
        guard cursor == Int(saved.endOffset) else { return }  // not a frame boundary: ignore it, send everything
        for segment in segments[..<index] { unlink(path(segment.sequence)) }
        segments.removeFirst(index)
        readSegment = saved.segment
        readOffset = saved.endOffset
        // The count is per segment: the delivered records of the one being read are taken off it.
        segments[0].records -= records
        segments[0].gaps -= gaps
        segments[0].gapActions -= gapActions
        if readOffset == segments[0].bytes && segments.count > 1 {
            unlink(path(segments[0].sequence))
            segments.removeFirst()
            readSegment = segments[0].sequence
            readOffset = 0
        }
    }

    // MARK: records settled out of order

    /// `settled`: the records done out of order (accepted, or set aside, while one before them was still to send),
    /// so a restart does not send them again either. One entry per record, appended when it is settled: its position
    /// (segment and offset, u64 BE each) and their CRC-32. Made durable with the spool's `sync()`, as `delivered` is.
    /// Emptied once the read position has passed them all, and rewritten with only those still ahead of it when most
    /// of its entries are behind it. Every entry names a record that was done, so losing some (a crash of the machine
    /// before a sync, a torn write) only sends those again; an entry is trusted only when it is the end of a frame in
    /// a segment still here that recovery did not rewrite, past the read position.
    private var settledFD: Int32 = -1
    /// The whole entries in the file: its size is always this many entries (a write that fails partway is cut back).
    private var settledFileEntries = 0
    private var settledDirty = false
    private static let settledEntryLength = 20

    private func openSettledFile() {
        settledFD = open(directory + "/settled", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
    }

    private static func settledEntry(_ position: Position) -> [UInt8] {
        var bytes: [UInt8] = []
        appendBigEndian(UInt32(truncatingIfNeeded: position.segment >> 32), to: &bytes)
        appendBigEndian(UInt32(truncatingIfNeeded: position.segment), to: &bytes)
        appendBigEndian(UInt32(truncatingIfNeeded: UInt64(position.endOffset) >> 32), to: &bytes)
        appendBigEndian(UInt32(truncatingIfNeeded: UInt64(position.endOffset)), to: &bytes)
        appendBigEndian(CRC32.checksum(bytes), to: &bytes)
        return bytes
    }

    /// Writes to `settled` (a test makes them fail partway).
    var writeSettled: (Int32, UnsafeRawBufferPointer) -> Int32? = FileIO.writeFully

    private func appendSettled(_ position: Position) {
        guard settledFD >= 0 else { return }
        let entry = Self.settledEntry(position)
        settledDirty = true
        if entry.withUnsafeBytes({ writeSettled(settledFD, $0) }) == nil {
            settledFileEntries += 1
        } else {
            // A part of the entry may have been written (a full disk): cut back to the last whole entry, or every
            // later one would be read out of step (damaged, and sent again).
            cutSettledFile()
        }
    }

    /// Cuts `settled` back to its whole entries after a failed write; when even that fails, closes it (nothing more
    /// is saved there this run: those records are sent again after a restart, never skipped).
    private func cutSettledFile() {
        if ftruncate(settledFD, off_t(settledFileEntries * Self.settledEntryLength)) != 0 {
            close(settledFD)
            settledFD = -1
        }
    }

    /// Empties the file once nothing is settled ahead; rewrites it with what is when most entries are behind the
    /// read position. A crash in the middle loses entries (sent again), never adds one.
    private func compactSettledFile() {
        guard settledFD >= 0, settledFileEntries > 0 else { return }
        if settledAhead.isEmpty {
            if ftruncate(settledFD, 0) == 0 {
                settledFileEntries = 0
                settledDirty = true
            }
        } else if settledFileEntries > 2 * settledAhead.count + 1024 {
            rewriteSettledFile()
        }
    }

    private func rewriteSettledFile() {
        guard settledFD >= 0, ftruncate(settledFD, 0) == 0 else { return }
        settledFileEntries = 0
        settledDirty = true
        var bytes: [UInt8] = []
        for position in settledAhead.sorted() { bytes += Self.settledEntry(position) }
        guard !bytes.isEmpty else { return }
        if bytes.withUnsafeBytes({ writeSettled(settledFD, $0) }) == nil {
            settledFileEntries = settledAhead.count
        } else {
            cutSettledFile()  // back to empty
        }
    }

    /// Every intact entry of `settled` (a torn or damaged one is skipped), in the order written.
    private func readSettled() -> [Position] {
        guard let bytes = readWhole(directory + "/settled") else { return [] }
        var positions: [Position] = []
        var cursor = 0
        while cursor + Self.settledEntryLength <= bytes.count {
            defer { cursor += Self.settledEntryLength }
            guard CRC32.checksum(Array(bytes[cursor..<cursor + 16])) == Self.bigEndian32(bytes, cursor + 16) else { continue }
            let segment = UInt64(Self.bigEndian32(bytes, cursor)) << 32 | UInt64(Self.bigEndian32(bytes, cursor + 4))
            let offset = UInt64(Self.bigEndian32(bytes, cursor + 8)) << 32 | UInt64(Self.bigEndian32(bytes, cursor + 12))
            positions.append(Position(segment: segment, endOffset: Int64(clamping: offset)))
        }
        return positions
    }

    /// Keeps the saved positions that still name a record to skip: past the read position, the end of a frame in a
    /// segment still here that recovery did not rewrite. Then moves the read position over any right after it.
    private func adoptSettled(_ saved: [Position]) {
        let candidates = Set(saved.filter { front < $0 && holds($0) })
        guard !candidates.isEmpty else { return }
        for segment in segments where candidates.contains(where: { $0.segment == segment.sequence }) {
            guard let bytes = readRange(sequence: segment.sequence, from: 0, length: Int(segment.bytes)) else { continue }
            var cursor = 0
            while let (_, next) = Self.frame(in: bytes, at: cursor) {
                let position = Position(segment: segment.sequence, endOffset: Int64(next))
                if candidates.contains(position) { settledAhead.insert(position) }
                cursor = next
            }
        }
        advanceOverSettled()
    }

    /// Segments recovery rewrote without a corrupt frame, and where that frame was: offsets past it moved.
    private var rewrittenFrom: [UInt64: Int64] = [:]

    /// Whether a position saved by an earlier run still names the same record: recovery did not move it.
    private func holds(_ position: Position) -> Bool {
        rewrittenFrom[position.segment].map { position.endOffset <= $0 } ?? true
    }

    /// Creates the directory and any missing parents with their final mode (0700), not chmod-ed later.
    private static func createDirectory(_ directory: String) throws(Failure) {
        var prefix = directory.hasPrefix("/") ? "/" : ""
        for component in directory.split(separator: "/") {
            prefix += component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw Failure(description: "cannot create \(prefix): \(String(cString: strerror(errno)))")
            }
            prefix += "/"
        }
    }

    private var directoryIdentity: (device: UInt64, inode: UInt64)?

    private static func identity(of path: String) -> (device: UInt64, inode: UInt64)? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return (UInt64(info.st_dev), UInt64(info.st_ino))
    }

    /// Whether the directory was removed (or replaced) since the spool opened it: everything in it is gone, and
    /// what is appended goes to deleted files. If so, it is created again (locked, a new segment) and the records
    /// lost are returned, to be reported; nil when it is still there.
    public func recreateIfRemoved() throws(Failure) -> Drops? {
        if let now = Self.identity(of: directory), let before = directoryIdentity, now == before { return nil }
        // Counted as a drop by the cap is: each action once, and a gap record as the actions it counted (carried).
        let pending = segments.filter { $0.sequence >= readSegment }
        let gaps = pending.reduce(0) { $0 + $1.gaps }
        let carried = pending.reduce(0) { $0 + $1.gapActions }
        let lost = max(0, pendingRecords - gaps) + carried
        let bytes = pending.reduce(0) { $0 + $1.bytes }
        let next = (segments.last?.sequence ?? 0) + 1
        for fd in [writeFD, lockFD, deliveredFD] where fd >= 0 { close(fd) }
        writeFD = -1
        lockFD = -1
        deliveredFD = -1
        try Self.createDirectory(directory)
        lockFD = try Self.lock(directory)
        directoryIdentity = Self.identity(of: directory)
        segments = []
        corruptStretches = [:]
        settledAhead = []
        savedPosition = nil
        try openWriteSegment(sequence: next)
        readSegment = next
        readOffset = 0
        deliveredFD = open(directory + "/delivered", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        saveDelivered()
        if settledFD >= 0 { close(settledFD) }
        openSettledFile()
        settledFileEntries = 0
        let millis = WallClock.nowMillis()
        var drops = Drops(records: lost, bytes: bytes, firstAt: millis, lastAt: millis)
        drops.carried = carried
        return drops
    }

    deinit {
        if writeFD >= 0 { close(writeFD) }
        if lockFD >= 0 { close(lockFD) }
        if deliveredFD >= 0 { close(deliveredFD) }
        if settledFD >= 0 { close(settledFD) }
    }

    /// Takes the directory's lock (`lock`, mode 0600; `FileIO.lockExclusively`).
    private static func lock(_ directory: String) throws(Failure) -> Int32 {
        let path = directory + "/lock"
        switch FileIO.lockExclusively(path) {
        case .success(let fd):
            return fd
        case .failure(let failure) where failure.code == EWOULDBLOCK:
            throw Failure(description: "\(directory) is used by another kaizen-egress process (it holds \(path))", inUse: true)
        case .failure(let failure):
            throw Failure(description: "cannot \(failure.call == "open" ? "open" : "lock") \(path): \(String(cString: strerror(failure.code)))")
        }
    }

    // MARK: writing

    /// Appends one record. It is in the kernel when this returns; `sync()` makes it durable.
    @discardableResult
    public func append(_ payload: [UInt8]) throws(Failure) -> Position {
        try append(contentsOf: [payload])
    }

    /// Appends records in order with as few writes as segment boundaries allow (one for a batch that fits).
    /// They are in the kernel when this returns, so a crash of the process keeps them; `sync()` makes them
    /// durable against a crash of the machine. Returns the position of the last.
    /// On failure, `Failure.written` says how many payloads (from the first) were written all the same.
    @discardableResult
    public func append(contentsOf payloads: [[UInt8]]) throws(Failure) -> Position {
        // Every size is checked before anything is counted or written: a bad one never leaves counters for frames
        // that were not written.
        if let bad = payloads.first(where: { $0.isEmpty || $0.count > Self.maximumRecord }) {
            throw Failure(description: "a record of \(bad.count) bytes is not one the spool takes")
        }
        if writeFD < 0 {
            // The last rotation could not create its segment (a full disk): try again.
            try openWriteSegment(sequence: (segments.last?.sequence ?? readSegment) + 1)
        }
        var buffer: [UInt8] = []
        var written = segments[segments.count - 1]  // the write segment as it is on disk
        var flushed = 0  // payloads written to a segment file so far
        func failed(_ failure: Failure) -> Failure {
            var failure = failure
            failure.written = flushed
            return failure
        }
        for (index, payload) in payloads.enumerated() {
            let frameLength = Int64(Self.headerLength + payload.count)
            if segments[segments.count - 1].bytes + frameLength > segmentBytes && segments[segments.count - 1].records > 0 {
                do throws(Failure) {
                    try flush(buffer, onto: written)
                    flushed = index
                    buffer.removeAll(keepingCapacity: true)
                    try openWriteSegment(sequence: segments[segments.count - 1].sequence + 1)
                } catch {
                    throw failed(error)
                }
                written = segments[segments.count - 1]
            }
            enforceCap(adding: frameLength)
            Self.appendBigEndian(UInt32(payload.count), to: &buffer)
            Self.appendBigEndian(CRC32.checksum(payload), to: &buffer)
            buffer += payload
            // Counted now so the cap and rotation see it; written below (or at the next rotation).
            segments[segments.count - 1].bytes += frameLength
            segments[segments.count - 1].records += 1
            if let gap = Self.gapCounts(in: payload) {
                segments[segments.count - 1].gaps += 1
                segments[segments.count - 1].gapActions += gap.actions
            }
        }
        do throws(Failure) {
            try flush(buffer, onto: written)
        } catch {
            throw failed(error)
        }
        let last = segments[segments.count - 1]
        return Position(segment: last.sequence, endOffset: last.bytes)
    }

    /// Appends as many of `payloads` as the spool takes: the batch at once, and when that fails partway, each
    /// payload it did not write on its own (never one it wrote: no duplicates). Returns the indices of those not
    /// written (lost) and the first failure.
    public func appendKeepingWhatFits(_ payloads: [[UInt8]]) -> (lost: [Int], failure: Failure?) {
        do {
            try append(contentsOf: payloads)
            return ([], nil)
        } catch {
            var lost: [Int] = []
            for index in min(error.written, payloads.count)..<payloads.count {
                do throws(Failure) {
                    try append(payloads[index])
                } catch {
                    lost.append(index)
                }
            }
            return (lost, error)
        }
    }

    /// Writes the frames counted into the write segment since `before`; on failure, cuts the file back and
    /// uncounts them, so a failed write never leaves a torn frame ahead of later records.
    private func flush(_ buffer: [UInt8], onto before: Segment) throws(Failure) {
        do {
            try writeAll(buffer)
        } catch {
            _ = ftruncate(writeFD, off_t(before.bytes))
            if segments[segments.count - 1].sequence == before.sequence {
                segments[segments.count - 1] = before
            }
            throw error
        }
    }

    /// Flushes appended records to the disk.
    public func sync() {
        if writeFD >= 0 { _ = fsync(writeFD) }
        if deliveredDirty, deliveredFD >= 0 {
            _ = fsync(deliveredFD)
            deliveredDirty = false
        }
        if settledDirty, settledFD >= 0 {
            _ = fsync(settledFD)
            settledDirty = false
        }
    }

    /// The drops since the last call, if any.
    public func takeDropped() -> Drops? {
        defer { drops = nil }
        return drops
    }

    // MARK: reading

    /// Up to `limit` records from the oldest undelivered one, with the position to acknowledge each. Reads
    /// only the bytes it needs from the read position on, so draining a large backlog stays linear.
    public func peek(limit: Int) -> [(Position, [UInt8])] {
        release()
        var result: [(Position, [UInt8])] = []
        defer { inFlight = Set(result.map(\.0)) }
        for entry in segments where entry.sequence >= readSegment && result.count < limit {
            var cursor = entry.sequence == readSegment ? readOffset : 0
            while result.count < limit && cursor < entry.bytes {
                if let end = corruptStretches[entry.sequence]?[cursor] {
                    cursor = end  // found corrupt by an earlier read: skipped, and counted then
                    continue
                }
                let wanted = Int(min(entry.bytes - cursor, Self.readChunk))
                guard let chunk = readRange(sequence: entry.sequence, from: cursor, length: wanted) else { break }
                var local = 0
                while result.count < limit, let (payload, next) = Self.frame(in: chunk, at: local) {
                    let position = Position(segment: entry.sequence, endOffset: cursor + Int64(next))
                    if !settledAhead.contains(position) { result.append((position, payload)) }
                    local = next
                }
                if local == 0 {
                    // One frame larger than the chunk: read exactly that frame.
                    guard chunk.count >= Self.headerLength else { break }
                    let frameLength = Self.headerLength + Int(Self.bigEndian32(chunk, 0))
                    guard frameLength <= Self.headerLength + Self.maximumRecord,  // else a corrupt length: no read
                        let whole = readRange(sequence: entry.sequence, from: cursor, length: frameLength),
                        let (payload, next) = Self.frame(in: whole, at: 0)
                    else {
                        // Corrupt: recovery cut such tails, so this is a disk fault. Resynchronised as recovery
                        // does: only the corrupt stretch is skipped (and counted), the intact frames after it are
                        // read as usual.
                        guard let end = skipCorrupt(in: entry, at: cursor) else { break }
                        cursor = end
                        continue
                    }
                    let position = Position(segment: entry.sequence, endOffset: cursor + Int64(next))
                    if !settledAhead.contains(position) { result.append((position, payload)) }
                    local = next
                }
                cursor += Int64(local)
            }
        }
        return result
    }

    /// Corrupt stretches found by a read after the spool was opened (a disk fault), by segment: where each starts
    /// and where the next intact frame (or the segment's end) is. Reads skip them; they were counted when found.
    private var corruptStretches: [UInt64: [Int64: Int64]] = [:]

    /// A corrupt frame at `offset` of `entry`, found by a read: resynchronises at the next intact frame as recovery
    /// does (`resync`), records the stretch to skip, and counts what it held as lost (`takeCorrupted`). Returns
    /// where reading goes on (the segment's end when nothing intact follows); nil when the segment cannot be read.
    private func skipCorrupt(in entry: Segment, at offset: Int64) -> Int64? {
        if let end = corruptStretches[entry.sequence]?[offset] { return end }
        guard offset < entry.bytes,
            let bytes = readRange(sequence: entry.sequence, from: offset, length: Int(entry.bytes - offset)),
            !bytes.isEmpty
        else { return nil }
        let found = Self.resync(bytes, from: 0)
        let stretch = found?.resume ?? bytes.count
        // How many records the stretch held: one when its header was intact, else estimated from the segment's
        // average frame.
        let average = max(1, Int(entry.bytes) / max(1, entry.records))
        let records = found?.exact == true ? 1 : max(1, stretch / average)
        corruptStretches[entry.sequence, default: [:]][offset] = offset + Int64(stretch)
        if let index = segments.firstIndex(where: { $0.sequence == entry.sequence }) {
            segments[index].records = max(0, segments[index].records - records)
        }
        let now = WallClock.nowMillis()
        var lost = corrupted ?? Drops(records: 0, bytes: 0, firstAt: now, lastAt: now)
        lost.records += records
        lost.bytes += Int64(stretch)
        lost.lastAt = now
        corrupted = lost
        if found == nil, entry.sequence == segments.last?.sequence {
            try? openWriteSegment(sequence: entry.sequence + 1)  // new records start a segment of their own
        }
        return offset + Int64(stretch)
    }

    /// Moves the read position over a corrupt stretch that starts at it.
    private func passCorruptStretches() {
        while let end = corruptStretches[readSegment]?[readOffset] { readOffset = end }
    }

    /// Deletes a segment's file and forgets what was found corrupt in it.
    private func remove(_ sequence: UInt64) {
        unlink(path(sequence))
        corruptStretches[sequence] = nil
    }

    /// Everything up to and including `position` was delivered: move past it (and past records settled ahead of
    /// it) and delete finished segments.
    public func acknowledge(through position: Position) {
        if !droppedInFlight.isEmpty { droppedInFlight = droppedInFlight.filter { position < $0.key } }
        if front < position {
            readSegment = position.segment
            readOffset = position.endOffset
        }
        advanceOverSettled()
        while let first = segments.first, segments.count > 1,
            first.sequence < readSegment || (first.sequence == readSegment && readOffset >= first.bytes)
        {
            remove(first.sequence)
            segments.removeFirst()
            if first.sequence == readSegment, let next = segments.first {
                readSegment = next.sequence
                readOffset = 0
            }
        }
        // Everything delivered: writing goes on in a new segment and the delivered one is deleted, so the backlog
        // (records and bytes) reads zero. Offsets are never reused: a `delivered` position that did not reach the
        // disk before a crash of the machine still names the old segment (gone, or delivered) and can never skip
        // a later record at the same offset.
        if segments.count == 1, segments[0].sequence == readSegment, segments[0].bytes > 0, readOffset >= segments[0].bytes {
            let delivered = segments[0].sequence
            if (try? openWriteSegment(sequence: delivered + 1)) != nil {
                segments.removeFirst()
                remove(delivered)
                readSegment = delivered + 1
                readOffset = 0
            }
        }
        saveDelivered()
    }

    /// One record at `position` is done (accepted or set aside) although one before it is not: it is never sent
    /// again; the read position moves over it when the records before it are acknowledged. Saved in `settled` (made
    /// durable with the next `sync()`), so a restart does not send it again either. Only a position in the spool is
    /// kept, so there are never more of them than records in the spool.
    public func settle(_ position: Position) {
        droppedInFlight[position] = nil  // done: the cap took nothing that was not delivered
        guard front < position,
            segments.contains(where: { $0.sequence == position.segment && position.endOffset <= $0.bytes })
        else { return }
        if settledAhead.insert(position).inserted { appendSettled(position) }
    }

    // MARK: internals

    /// Moves the read position over records already settled, forgetting those behind it.
    private func advanceOverSettled() {
        passCorruptStretches()
        if !settledAhead.isEmpty {
            settledAhead = settledAhead.filter { front < $0 }
            while !settledAhead.isEmpty, let next = positionAfterFront(), settledAhead.remove(next) != nil {
                readSegment = next.segment
                readOffset = next.endOffset
                passCorruptStretches()
            }
        }
        compactSettledFile()
    }

    /// Where the record at the read position ends (its frame header read from disk).
    private func positionAfterFront() -> Position? {
        for entry in segments where entry.sequence >= readSegment {
            var start = entry.sequence == readSegment ? readOffset : 0
            while let end = corruptStretches[entry.sequence]?[start] { start = end }
            guard start < entry.bytes else { continue }
            guard let header = readRange(sequence: entry.sequence, from: start, length: Self.headerLength),
                header.count == Self.headerLength
            else { return nil }
            return Position(segment: entry.sequence, endOffset: start + Int64(Self.headerLength) + Int64(Self.bigEndian32(header, 0)))
        }
        return nil
    }

    private func path(_ sequence: UInt64) -> String {
        let digits = String(sequence)
        return directory + "/segment-" + String(repeating: "0", count: max(0, 16 - digits.count)) + digits + ".log"
    }

    private func openWriteSegment(sequence: UInt64) throws(Failure) {
        if writeFD >= 0 {
            _ = fsync(writeFD)
            close(writeFD)
            writeFD = -1  // until the next one opens: a failure here is retried by the next append
        }
        let fd = open(path(sequence), O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw Failure(description: "cannot create a spool segment in \(directory): \(String(cString: strerror(errno)))")
        }
        writeFD = fd
        segments.append(Segment(sequence: sequence, bytes: 0, records: 0))
    }

    /// Drops the oldest segments (never the one being written) until `adding` more bytes fit, counting the
    /// undelivered records lost and the range of their `started_at` times.
    private func enforceCap(adding: Int64) {
        while totalBytes + adding > maxBytes, segments.count > 1 {
            let oldest = segments.removeFirst()
            if oldest.sequence >= readSegment {
                countDrop(of: oldest, from: oldest.sequence == readSegment ? readOffset : 0)
            }
            remove(oldest.sequence)
            if oldest.sequence >= readSegment, let next = segments.first {
                readSegment = next.sequence
                readOffset = 0
            }
        }
        advanceOverSettled()
    }

    private func countDrop(of segment: Segment, from offset: Int64) {
        guard let bytes = readRange(sequence: segment.sequence, from: offset, length: Int(segment.bytes - offset)) else { return }
        var cursor = 0
        var losses: [Loss] = []
        while cursor < bytes.count {
            guard let (payload, next) = Self.frame(in: bytes, at: cursor) else {
                // A corrupt stretch (found now or by an earlier read) is counted as corrupted, not dropped; the
                // intact frames after it are dropped records like any.
                guard let end = skipCorrupt(in: segment, at: offset + Int64(cursor)) else { break }
                cursor = Int(end - offset)
                continue
            }
            defer { cursor = next }
            let position = Position(segment: segment.sequence, endOffset: offset + Int64(next))
            // Accepted already (out of order): not lost.
            if settledAhead.remove(position) != nil { continue }
            let loss: Loss
            if let gap = Self.gapCounts(in: payload) {
                // An earlier gap record: its count is carried into the next one, not lost, and it is no action.
                loss = Loss(records: gap.actions, carried: gap.actions, bytes: gap.bytes, first: gap.oldest, last: gap.newest)
            } else {
                let started = Self.startedAt(in: payload)
                loss = Loss(records: 1, carried: 0, bytes: next - cursor, first: started, last: started)
            }
            if inFlight.contains(position) {
                droppedInFlight[position] = loss  // counted only if its answer says it was not accepted
            } else {
                losses.append(loss)
            }
        }
        count(losses)
    }

    private func count(_ losses: [Loss]) {
        guard !losses.isEmpty else { return }
        let now = WallClock.nowMillis()
        var counted = drops ?? Drops(records: 0, bytes: 0, firstAt: now, lastAt: now)
        for loss in losses {
            counted.records += loss.records
            counted.carried += loss.carried
            counted.bytes += Int64(loss.bytes)
            if counted.oldestStartedAt == nil { counted.oldestStartedAt = loss.first }
            if let last = loss.last { counted.newestStartedAt = last }
        }
        counted.lastAt = now
        drops = counted
    }

    /// The records sent and not done (`peek` is called again, or `release`) whose segment the cap dropped meanwhile
    /// are lost now: counted.
    private func countDroppedInFlight() {
        guard !droppedInFlight.isEmpty else { return }
        count(droppedInFlight.sorted { $0.key < $1.key }.map(\.value))
        droppedInFlight = [:]
    }

    /// The records last peeked are answered: those not settled or acknowledged meanwhile (to be sent again) and
    /// dropped by the cap while in flight are counted lost now (`takeDropped`).
    public func release() {
        countDroppedInFlight()
        inFlight = []
    }

    /// The counts and time range a spooled gap record (`egress_gap`) carries; nil for any other record.
    static func gapCounts(in payload: [UInt8]) -> (actions: Int, bytes: Int, oldest: String?, newest: String?)? {
        guard value(of: #""kind":""#, in: payload, until: UInt8(ascii: "\"")) == DroppedActionsRecord.kind,
            let actions = value(of: #""dropped_actions":"#, in: payload, until: UInt8(ascii: ",")).flatMap({ Int($0) })
        else { return nil }
        let bytes = value(of: #""dropped_bytes":"#, in: payload, until: UInt8(ascii: ",")).flatMap { Int($0) } ?? 0
        return (
            actions, bytes, value(of: #""oldest_started_at":""#, in: payload, until: UInt8(ascii: "\"")),
            value(of: #""newest_started_at":""#, in: payload, until: UInt8(ascii: "\""))
        )
    }

    /// The `"started_at":"…"` value of a spooled action, found without decoding the whole record.
    static func startedAt(in payload: [UInt8]) -> String? {
        value(of: #""started_at":""#, in: payload, until: UInt8(ascii: "\""))
    }

    /// What follows the first `key` in `payload` up to `end` (at most 64 bytes), found without decoding it.
    static func value(of key: String, in payload: [UInt8], until end: UInt8) -> String? {
        let key = Array(key.utf8)
        guard payload.count > key.count else { return nil }
        var index = 0
        while index + key.count < payload.count {
            if payload[index] == key[0], payload[index..<index + key.count].elementsEqual(key) {
                let start = index + key.count
                guard let stop = payload[start...].firstIndex(where: { $0 == end || $0 == UInt8(ascii: "}") }), stop - start <= 64
                else { return nil }
                return String(decoding: payload[start..<stop], as: UTF8.self)
            }
            index += 1
        }
        return nil
    }

    /// Reads every segment, keeps its valid frames, and cuts a torn or corrupt tail off.
    private func recover() throws(Failure) {
        guard let handle = opendir(directory) else {
            throw Failure(description: "cannot read \(directory): \(String(cString: strerror(errno)))")
        }
        var sequences: [UInt64] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.hasPrefix("segment-"), name.hasSuffix(".log"),
                let sequence = UInt64(name.dropFirst(8).dropLast(4))
            else { continue }
            sequences.append(sequence)
        }
        closedir(handle)
        for sequence in sequences.sorted() {
            guard let bytes = readFile(sequence: sequence) else { continue }
            let scan = Self.scan(bytes)
            if scan.lostRecords > 0 {
                // Corrupt frames inside the segment (a flipped bit): it is rewritten with the intact ones. The saved
                // positions the rewrite moves are forgotten on the disk first.
                forgetSavedPositions(in: sequence, past: Int64(scan.firstBad))
                let replaced = scan.kept.withUnsafeBytes { raw -> Bool in
                    (try? FileIO.replace(path(sequence), with: raw)) != nil
                }
                if replaced {
                    rewrittenFrom[sequence] = Int64(scan.firstBad)  // offsets past it moved: saved positions there no longer hold
                    let now = WallClock.nowMillis()
                    var lost = corrupted ?? Drops(records: 0, bytes: 0, firstAt: now, lastAt: now)
                    lost.records += scan.lostRecords
                    lost.bytes += Int64(scan.lostBytes)
                    corrupted = lost
                } else {
                    _ = truncate(path(sequence), off_t(scan.firstBad))  // cannot rewrite: keep what came before
                    let intact = Self.scan(Array(bytes.prefix(scan.firstBad)))
                    if intact.records > 0 {
                        let gaps = Self.gapTotals(intact.kept)
                        segments.append(Segment(
                            sequence: sequence, bytes: Int64(scan.firstBad), records: intact.records, gaps: gaps.records,
                            gapActions: gaps.actions))
                    } else {
                        unlink(path(sequence))
                    }
                    continue
                }
            } else if scan.kept.count < bytes.count {
                _ = truncate(path(sequence), off_t(scan.kept.count))  // a torn tail (a crash mid-write): cut off
            }
            if scan.records == 0 {
                unlink(path(sequence))
                continue
            }
            let gaps = Self.gapTotals(scan.kept)
            segments.append(Segment(
                sequence: sequence, bytes: Int64(scan.kept.count), records: scan.records, gaps: gaps.records,
                gapActions: gaps.actions))
        }
    }

    /// Before recovery rewrites (or cuts) segment `sequence` without its corrupt frame at `offset`, the saved positions
    /// past that frame, which would then name other records, are taken out of `delivered` (delivery restarts at the
    /// segment's start) and `settled`, durably: the files are replaced (fsynced) and the directory fsynced before the
    /// segment changes. Otherwise a crash of the machine after the rewrite reached the disk and before the corrected
    /// files did would let the next start, which finds nothing to repair and so nothing moved, trust them and skip
    /// records never sent. A file that cannot be replaced is removed (its records are sent again, never skipped).
    private func forgetSavedPositions(in sequence: UInt64, past offset: Int64) {
        func moved(_ position: Position) -> Bool { position.segment == sequence && position.endOffset > offset }
        var changed = false
        if let saved = readDelivered(), moved(saved) {
            let bytes = Self.deliveredBytes(Position(segment: sequence, endOffset: 0))
            let replaced = bytes.withUnsafeBytes { (try? FileIO.replace(directory + "/delivered", with: $0)) != nil }
            if !replaced { unlink(directory + "/delivered") }
            changed = true
        }
        let settled = readSettled()
        if settled.contains(where: moved) {
            let bytes = settled.filter { !moved($0) }.flatMap(Self.settledEntry)
            let replaced = bytes.withUnsafeBytes { (try? FileIO.replace(directory + "/settled", with: $0)) != nil }
            if !replaced { unlink(directory + "/settled") }
            changed = true
        }
        if changed { _ = FileIO.syncDirectory(directory) }
    }

    /// How many of the intact frames in `bytes` are gap records, and the actions they count.
    static func gapTotals(_ bytes: [UInt8]) -> (records: Int, actions: Int) {
        var cursor = 0
        var totals = (records: 0, actions: 0)
        while let (payload, next) = frame(in: bytes, at: cursor) {
            if let gap = gapCounts(in: payload) {
                totals.records += 1
                totals.actions += gap.actions
            }
            cursor = next
        }
        return totals
    }

    /// Records lost to corrupt frames found by `init` (a flipped bit inside a segment), or by `peek` later (counted
    /// as their segment goes), if any.
    public func takeCorrupted() -> Drops? {
        defer { corrupted = nil }
        return corrupted
    }

    /// The intact frames of a segment, in order. A bad frame followed by intact ones is skipped (resynchronising
    /// at the next intact frame: where its header says it ends, else the next offset where a whole frame's CRC
    /// matches) and counted as lost; a bad frame with nothing intact after it is a torn tail and is cut.
    static func scan(_ bytes: [UInt8]) -> (kept: [UInt8], records: Int, lostRecords: Int, lostBytes: Int, firstBad: Int) {
        var kept: [UInt8] = []
        kept.reserveCapacity(bytes.count)
        var cursor = 0
        var records = 0
        var lostRecords = 0
        var lostBytes = 0
        var firstBad = bytes.count
        while cursor < bytes.count {
            if let (_, next) = frame(in: bytes, at: cursor) {
                kept += bytes[cursor..<next]
                records += 1
                cursor = next
                continue
            }
            firstBad = min(firstBad, cursor)
            guard let (resume, exact) = resync(bytes, from: cursor) else { break }  // nothing intact after it: a torn tail
            // Exactly one lost when the header was right; else how many is unknown: estimated from the segment's
            // average frame.
            let lost = exact || records == 0 ? 1 : max(1, (resume - cursor) / max(1, kept.count / records))
            lostRecords += lost
            lostBytes += resume - cursor
            cursor = resume
        }
        return (kept, records, lostRecords, lostBytes, firstBad)
    }

    /// Where the next intact frame after the bad one at `cursor` starts: where its header says it ends when an intact
    /// frame starts there (`exact`: one frame lost), else the next offset where a whole frame's CRC matches; nil when
    /// nothing intact follows. Used by recovery and by reads that find a corrupt frame later, so both lose the same.
    static func resync(_ bytes: [UInt8], from cursor: Int) -> (resume: Int, exact: Bool)? {
        if bytes.count - cursor >= headerLength {
            let skip = cursor + headerLength + Int(bigEndian32(bytes, cursor))
            if skip < bytes.count, frame(in: bytes, at: skip) != nil { return (skip, true) }
        }
        var probe = cursor + 1
        while probe + headerLength <= bytes.count {
            if frame(in: bytes, at: probe) != nil { return (probe, false) }
            probe += 1
        }
        return nil
    }

    private func readFile(sequence: UInt64) -> [UInt8]? {
        readWhole(path(sequence))
    }

    private func readWhole(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            bytes += chunk[0..<count]
        }
        return bytes
    }

    /// Up to `length` bytes of a segment from `offset` (fewer at its end).
    private func readRange(sequence: UInt64, from offset: Int64, length: Int) -> [UInt8]? {
        let fd = open(path(sequence), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: length)
        var filled = 0
        while filled < length {
            let count = bytes.withUnsafeMutableBytes { raw in
                pread(fd, raw.baseAddress! + filled, length - filled, off_t(offset) + off_t(filled))
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            filled += count
        }
        if filled < length { bytes.removeLast(length - filled) }
        return bytes
    }

    /// The frame at `offset`, if complete and intact: its payload and the offset after it. No record is empty, so
    /// a zero length is no frame: zeros (the tail a power loss can leave, a zeroed block) would otherwise pass as
    /// empty frames (the CRC-32 of nothing is 0) and be sent; they are a torn tail or corruption instead.
    static func frame(in bytes: [UInt8], at offset: Int) -> ([UInt8], Int)? {
        guard bytes.count - offset >= headerLength else { return nil }
        let length = Int(bigEndian32(bytes, offset))
        let checksum = bigEndian32(bytes, offset + 4)
        guard length > 0, length <= maximumRecord, bytes.count - offset - headerLength >= length else { return nil }
        let payload = Array(bytes[(offset + headerLength)..<(offset + headerLength + length)])
        guard CRC32.checksum(payload) == checksum else { return nil }
        return (payload, offset + headerLength + length)
    }

    private static func bigEndian32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        UInt32(bytes[offset]) << 24 | UInt32(bytes[offset + 1]) << 16 | UInt32(bytes[offset + 2]) << 8
            | UInt32(bytes[offset + 3])
    }

    private static func appendBigEndian(_ value: UInt32, to bytes: inout [UInt8]) {
        bytes += [UInt8(value >> 24), UInt8((value >> 16) & 0xff), UInt8((value >> 8) & 0xff), UInt8(value & 0xff)]
    }

    private func writeAll(_ bytes: [UInt8]) throws(Failure) {
        if let failure = bytes.withUnsafeBytes({ FileIO.writeFully(writeFD, $0) }) {
            throw Failure(description: "cannot write to the spool: \(FileIO.reason(failure))")
        }
    }
}

@available(*, unavailable)
extension Spool: Sendable {}

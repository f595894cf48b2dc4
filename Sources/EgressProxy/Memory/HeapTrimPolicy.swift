/// When to give the heap's freed pages back to the system.
///
/// glibc keeps what a load burst freed: a proxy that held 800 connections stays at their peak resident size (about
/// 150 MB against 40 at rest) although it uses a few MB, and a pod's memory limit counts it. `malloc_trim` gives
/// those pages back. The policy trims when most of the heap is free (more free than in use, and at least
/// `minimumFreeBytes`) and, since the last trim, the process grew or the heap's free memory grew by
/// `minimumFreeBytes` from its lowest point (memory a load touched, then freed). So it trims after a burst ends
/// (and again if a trim came before the burst's last connections closed), not on every tick while idle (a trim
/// leaves the free chunks free, only their pages go) and not under a steady load, whose free chunks are reused.
struct HeapTrimPolicy {
    /// One reading of the heap and the process.
    struct Sample: Equatable {
        /// Bytes in the allocator's free chunks.
        var freeBytes: Int
        /// Bytes the process allocated and has not freed.
        var inUseBytes: Int
        /// The process's resident size (what a memory limit counts).
        var residentBytes: Int
    }

    enum Action: Equatable {
        case trim
        case wait
    }

    /// Free memory worth a trim, and the growth since the last trim that makes another worth it.
    let minimumFreeBytes: Int
    /// The lowest resident size and free heap since the last trim; nil before the first trim.
    private(set) var floor: (residentBytes: Int, freeBytes: Int)?

    init(minimumFreeBytes: Int = 8 << 20) {
        self.minimumFreeBytes = minimumFreeBytes
    }

    /// What to do on this reading.
    mutating func next(_ sample: Sample) -> Action {
        if let low = floor {
            floor = (min(low.residentBytes, sample.residentBytes), min(low.freeBytes, sample.freeBytes))
        }
        guard sample.freeBytes >= minimumFreeBytes, sample.freeBytes >= sample.inUseBytes else { return .wait }
        if let floor, sample.residentBytes < floor.residentBytes + minimumFreeBytes,
            sample.freeBytes < floor.freeBytes + minimumFreeBytes
        {
            return .wait
        }
        return .trim
    }

    /// Records what a trim left: the process's resident size after it, and the free heap (which a trim does not
    /// change: it returns the free chunks' pages, the chunks stay free).
    mutating func trimmed(_ after: Sample) {
        floor = (after.residentBytes, after.freeBytes)
    }
}

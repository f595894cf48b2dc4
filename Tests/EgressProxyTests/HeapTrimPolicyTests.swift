@testable import EgressProxy
import Testing

@Suite struct HeapTrimPolicyTests {
    let mib = 1 << 20

    func sample(free: Int, inUse: Int, resident: Int) -> HeapTrimPolicy.Sample {
        .init(freeBytes: free * mib, inUseBytes: inUse * mib, residentBytes: resident * mib)
    }

    @Test func aBurstThatEndedIsTrimmedOnceThenNotWhileIdle() {
        var policy = HeapTrimPolicy(minimumFreeBytes: 16 << 20)
        #expect(policy.next(sample(free: 2, inUse: 5, resident: 40)) == .wait)  // at rest
        #expect(policy.next(sample(free: 10, inUse: 90, resident: 140)) == .wait)  // under load: in use
        let ended = sample(free: 110, inUse: 5, resident: 150)
        #expect(policy.next(ended) == .trim)
        policy.trimmed(sample(free: 110, inUse: 5, resident: 42))
        // Idle: the free chunks stay free after a trim (only their pages went), and nothing grew.
        for _ in 0..<5 { #expect(policy.next(sample(free: 110, inUse: 5, resident: 42)) == .wait) }
        // A second burst that grew the process is trimmed again once it ends.
        #expect(policy.next(sample(free: 30, inUse: 80, resident: 120)) == .wait)
        #expect(policy.next(sample(free: 105, inUse: 5, resident: 120)) == .trim)
    }

    @Test func aSteadyLoadIsNotTrimmed() {
        var policy = HeapTrimPolicy(minimumFreeBytes: 16 << 20)
        // Free memory under a load is reused by it: less free than in use, so no trim however long it runs.
        for step in 0..<20 {
            #expect(policy.next(sample(free: 40 + step % 3, inUse: 90, resident: 150)) == .wait)
        }
    }

    @Test func littleFreeMemoryIsNotWorthATrim() {
        var policy = HeapTrimPolicy(minimumFreeBytes: 16 << 20)
        #expect(policy.next(sample(free: 15, inUse: 3, resident: 40)) == .wait)
        #expect(policy.next(sample(free: 16, inUse: 3, resident: 40)) == .trim)
    }

    @Test func aTrimDuringTheBurstIsFollowedByOneWhenItsLastConnectionsClose() {
        var policy = HeapTrimPolicy(minimumFreeBytes: 16 << 20)
        // Trimmed while connections were still closing: the process did not grow after it, but the heap's free
        // memory did (pages the load had touched, freed after the trim).
        #expect(policy.next(sample(free: 20, inUse: 18, resident: 79)) == .trim)
        policy.trimmed(sample(free: 20, inUse: 18, resident: 65))
        #expect(policy.next(sample(free: 30, inUse: 8, resident: 66)) == .wait)
        #expect(policy.next(sample(free: 45, inUse: 3, resident: 67)) == .trim)
        policy.trimmed(sample(free: 45, inUse: 3, resident: 50))
        #expect(policy.next(sample(free: 45, inUse: 3, resident: 50)) == .wait)
    }

    @Test func growthIsCountedFromTheLowestPointSinceTheTrim() {
        var policy = HeapTrimPolicy(minimumFreeBytes: 16 << 20)
        #expect(policy.next(sample(free: 60, inUse: 5, resident: 100)) == .trim)
        policy.trimmed(sample(free: 60, inUse: 5, resident: 45))
        // A load reused the free chunks (free fell to 10), then freed them again (back to 60): their pages were
        // touched again, though free memory is where it was at the trim.
        #expect(policy.next(sample(free: 10, inUse: 55, resident: 95)) == .wait)
        #expect(policy.next(sample(free: 60, inUse: 5, resident: 95)) == .trim)
    }

    @Test func theServiceReadsThisProcess() throws {
        try #require(HeapTrimService.isSupported, "glibc 2.33 or later")
        let sample = try #require(HeapTrimService.sample())
        #expect(sample.residentBytes > 1 << 20)
        #expect(sample.inUseBytes > 0)
        // Memory freed is seen as free, and a trim gives its pages back.
        var blocks: [UnsafeMutableRawPointer] = []
        for _ in 0..<1024 {  // 64 MiB, far above the 16 MiB asserted, as other tests allocate meanwhile
            let block = UnsafeMutableRawPointer.allocate(byteCount: 64 << 10, alignment: 16)
            block.initializeMemory(as: UInt8.self, repeating: 1, count: 64 << 10)
            blocks.append(block)
        }
        for block in blocks.dropLast() { block.deallocate() }  // the last keeps the others from the heap's top
        let freed = try #require(HeapTrimService.sample())
        #expect(freed.freeBytes >= sample.freeBytes + 16 << 20)
        HeapTrimService.trim()
        let trimmed = try #require(HeapTrimService.sample())
        #expect(trimmed.residentBytes <= freed.residentBytes - (16 << 20))
        blocks.last?.deallocate()
    }
}

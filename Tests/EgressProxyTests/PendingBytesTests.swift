@testable import EgressProxy
import NIOCore
import Testing

/// What an inspected connection's handlers keep of a peer's bytes while a head is incomplete.
@Suite struct PendingBytesTests {
    /// A peer whose every read ends inside a head (a stream of 1xx responses, pipelined requests split anywhere):
    /// the bytes already decoded are dropped before each append, so what is kept stays the size of one head.
    @Test func decodedBytesAreNotKeptWhenMoreArrive() {
        var pending: ByteBuffer? = nil
        var largest = 0
        for _ in 0..<10_000 {
            var read = ByteBuffer(string: String(repeating: "x", count: 1_000))
            InterceptedClientHandler.append(&read, to: &pending)
            // The decoder takes all but the last 100 bytes (the start of the next head).
            pending!.moveReaderIndex(forwardBy: pending!.readableBytes - 100)
            largest = max(largest, pending!.capacity)
        }
        #expect(pending?.readableBytes == 100)
        #expect(largest < 64 * 1024, "\(largest) bytes kept")
    }

    @Test func anEmptyPendingBufferIsReplacedByTheRead() {
        var pending: ByteBuffer? = ByteBuffer(string: "ab")
        pending!.moveReaderIndex(forwardBy: 2)
        var read = ByteBuffer(string: "GET")
        InterceptedClientHandler.append(&read, to: &pending)
        #expect(pending.map { String(buffer: $0) } == "GET")
        var more = ByteBuffer(string: " /")
        InterceptedClientHandler.append(&more, to: &pending)
        #expect(pending.map { String(buffer: $0) } == "GET /")
    }
}

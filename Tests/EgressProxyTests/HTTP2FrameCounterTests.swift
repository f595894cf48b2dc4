@testable import EgressProxy
import Testing

/// The HTTP/2 flood counter on bytes, without sockets: frames split anywhere, the preface skipped, and the two
/// floods it stops (WINDOW_UPDATEs beyond the DATA sent, HEADERS beyond a message's).
@Suite struct HTTP2FrameCounterTests {
    static func frame(type: UInt8, stream: UInt32, payload: Int) -> [UInt8] {
        [UInt8(payload >> 16 & 0xff), UInt8(payload >> 8 & 0xff), UInt8(payload & 0xff), type, 0,
         UInt8(stream >> 24 & 0x7f), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff)]
            + [UInt8](repeating: 0, count: payload)
    }
    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    /// Feeds `bytes` in pieces of `piece` bytes; the first flood found.
    static func feed(_ counter: inout HTTP2FrameCounter, _ bytes: [UInt8], _ direction: HTTP2FrameCounter.Direction, piece: Int) -> String? {
        var start = 0
        while start < bytes.count {
            let end = min(start + piece, bytes.count)
            if let flood = bytes[start..<end].withUnsafeBytes({ counter.consume($0, direction) }) { return flood }
            start = end
        }
        return nil
    }

    @Test(arguments: [1, 7, 9, 10, 4096])
    func windowUpdatesBeyondTheDataSentAreAFlood(piece: Int) {
        var counter = HTTP2FrameCounter(prefaceFrom: .inbound)
        // The client's preface and SETTINGS, then a request on stream 1 and its trailers.
        var inbound = Self.preface + Self.frame(type: 0x4, stream: 0, payload: 12)
        inbound += Self.frame(type: 0x1, stream: 1, payload: 40) + Self.frame(type: 0x1, stream: 1, payload: 10)
        #expect(Self.feed(&counter, inbound, .inbound, piece: piece) == nil)
        // 200 DATA frames of 100 bytes sent on stream 1: up to 200 + the slack WINDOW_UPDATEs for it are fine (19 KiB
        // adds 19), also many on the connection (stream 0).
        var outbound: [UInt8] = []
        for _ in 0..<200 { outbound += Self.frame(type: 0x0, stream: 1, payload: 100) }
        #expect(Self.feed(&counter, outbound, .outbound, piece: piece) == nil)
        var updates: [UInt8] = []
        for _ in 0..<(200 + 19 + HTTP2FrameCounter.windowUpdateSlack) { updates += Self.frame(type: 0x8, stream: 1, payload: 4) }
        for _ in 0..<1000 { updates += Self.frame(type: 0x8, stream: 0, payload: 4) }
        #expect(Self.feed(&counter, updates, .inbound, piece: piece) == nil)
        // One more on stream 1 is one no DATA called for.
        #expect(Self.feed(&counter, Self.frame(type: 0x8, stream: 1, payload: 4), .inbound, piece: piece)
            == "348 WINDOW_UPDATE frames on stream 1, which was sent 200 DATA frames (20000 bytes)")
    }

    /// Go's HTTP/2 sends a stream WINDOW_UPDATE for every 4 KiB its reader takes: four per 16 KiB DATA frame, for
    /// as long as the body lasts. Never a flood.
    @Test func aReaderThatUpdatesEvery4KiBIsNoFlood() {
        var counter = HTTP2FrameCounter(prefaceFrom: .inbound)
        #expect(Self.feed(&counter, Self.preface + Self.frame(type: 0x1, stream: 3, payload: 20), .inbound, piece: 4096) == nil)
        for _ in 0..<2_000 {  // 32 MB
            #expect(Self.feed(&counter, Self.frame(type: 0x0, stream: 3, payload: 16_384), .outbound, piece: 20_000) == nil)
            var updates: [UInt8] = []
            for _ in 0..<4 { updates += Self.frame(type: 0x8, stream: 3, payload: 4) }
            guard Self.feed(&counter, updates, .inbound, piece: 64) == nil else {
                Issue.record("a 4 KiB reader was taken for a flood")
                return
            }
        }
    }

    @Test func headersBeyondAMessagesAreAFlood() {
        // The upstream's side: the preface is what the proxy sends.
        var counter = HTTP2FrameCounter(prefaceFrom: .outbound)
        #expect(Self.feed(&counter, Self.preface + Self.frame(type: 0x1, stream: 1, payload: 30), .outbound, piece: 5) == nil)
        var heads: [UInt8] = []
        for _ in 0..<HTTP2FrameCounter.headersPerStream { heads += Self.frame(type: 0x1, stream: 1, payload: 8) }
        #expect(Self.feed(&counter, heads, .inbound, piece: 3) == nil)
        #expect(Self.feed(&counter, Self.frame(type: 0x1, stream: 3, payload: 8), .inbound, piece: 3) == nil)
        #expect(Self.feed(&counter, Self.frame(type: 0x1, stream: 1, payload: 8), .inbound, piece: 3) == "17 HEADERS frames on stream 1")
    }

    static func reset(stream: UInt32, code: UInt32) -> [UInt8] {
        var bytes = frame(type: 0x3, stream: stream, payload: 0)
        bytes[2] = 4
        return bytes + [UInt8(code >> 24), UInt8(code >> 16 & 0xff), UInt8(code >> 8 & 0xff), UInt8(code & 0xff)]
    }

    /// The RST_STREAM frames written to the peer, with their codes, however the bytes are split; none read from the
    /// peer, and none unless asked for.
    @Test(arguments: [1, 3, 9, 11, 4096])
    func resetsWrittenAreNotedWithTheirCodes(piece: Int) {
        var counter = HTTP2FrameCounter(prefaceFrom: .inbound, watchesResets: true)
        var outbound = Self.frame(type: 0x4, stream: 0, payload: 6) + Self.reset(stream: 3, code: 1)
        outbound += Self.frame(type: 0x0, stream: 1, payload: 20) + Self.reset(stream: 0x7fff_fffd, code: 0x0102_0304)
        var taken: [HTTP2FrameCounter.Reset] = []
        var start = 0
        while start < outbound.count {
            let end = min(start + piece, outbound.count)
            _ = outbound[start..<end].withUnsafeBytes { counter.consume($0, .outbound) }
            taken += counter.takeResets()
            start = end
        }
        #expect(taken == [.init(stream: 3, code: 1), .init(stream: 0x7fff_fffd, code: 0x0102_0304)])
        #expect(Self.feed(&counter, Self.preface + Self.reset(stream: 5, code: 8), .inbound, piece: piece) == nil)
        #expect(counter.takeResets().isEmpty)

        var unwatched = HTTP2FrameCounter(prefaceFrom: .inbound)
        #expect(Self.feed(&unwatched, Self.reset(stream: 3, code: 1), .outbound, piece: piece) == nil)
        #expect(unwatched.takeResets().isEmpty)
    }
}

import ClientHello
@testable import EgressProxy
import Foundation
import NIOCore
import Testing

@Suite struct ClientHelloPeekTests {
    static func fixture(_ name: String) throws -> [UInt8] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("ClientHelloTests/Fixtures/\(name).bin")
        return [UInt8](try Data(contentsOf: url))
    }

    @Test(arguments: ["chromium", "curl", "python", "openssl", "node", "java"])
    func splitAtEveryOffsetGivesTheSameAnswer(_ name: String) throws {
        let bytes = try Self.fixture(name)
        var whole = ClientHelloPeek(limit: 64 * 1024)
        guard case .done(let expected) = whole.feed(ByteBuffer(bytes: bytes)) else {
            Issue.record("whole fixture not concluded")
            return
        }
        #expect(expected.hello?.serverName == "hello.fixture.test")
        for split in 1..<bytes.count {
            var peek = ClientHelloPeek(limit: 64 * 1024)
            #expect(peek.feed(ByteBuffer(bytes: bytes[0..<split])) == .keepLooking, "split \(split)")
            #expect(peek.feed(ByteBuffer(bytes: bytes[split...])) == .done(expected), "split \(split)")
        }
    }

    @Test func oneByteAtATime() throws {
        let bytes = try Self.fixture("chromium")
        var peek = ClientHelloPeek(limit: 64 * 1024)
        for (index, byte) in bytes.enumerated() {
            let step = peek.feed(ByteBuffer(bytes: [byte]))
            if index < bytes.count - 1 {
                #expect(step == .keepLooking)
            } else {
                guard case .done(let result) = step else {
                    Issue.record("not concluded")
                    return
                }
                #expect(result.tls == true)
                #expect(result.hello?.alpn == ["h2", "http/1.1"])
                #expect(result.sniError == nil)
            }
        }
    }

    @Test func notTLSConcludesAtOnce() {
        var peek = ClientHelloPeek(limit: 64 * 1024)
        guard case .done(let result) = peek.feed(ByteBuffer(string: "SSH-2.0-OpenSSH\r\n")) else {
            Issue.record("not concluded")
            return
        }
        #expect(result.tls == false)
        #expect(result.hello == nil)
        #expect(result.sniError?.hasPrefix("not TLS") == true)
    }

    @Test func stopsAtTheLimit() throws {
        let bytes = try Self.fixture("chromium")
        // The handshake header already announces more than the limit: no need to wait for it.
        var early = ClientHelloPeek(limit: 1000)
        guard case .done(let result) = early.feed(ByteBuffer(bytes: bytes[0..<600])) else {
            Issue.record("not concluded")
            return
        }
        #expect(result.sniError?.contains("larger than 1000") == true)
        // Framed into 1-byte records, the same hello overruns a 4 KiB limit only through record headers.
        let framed = reframe(bytes, recordSize: 1)
        var late = ClientHelloPeek(limit: 4096)
        var outcome: ClientHelloPeek.Step = .keepLooking
        var offset = 0
        while offset < framed.count, outcome == .keepLooking {
            outcome = late.feed(ByteBuffer(bytes: framed[offset..<min(offset + 500, framed.count)]))
            offset += 500
        }
        guard case .done(let overrun) = outcome else {
            Issue.record("not concluded")
            return
        }
        #expect(overrun.sniError?.contains("larger than 4096") == true)
        #expect(offset <= 4096 + 500)
    }

    /// The handshake inside a one-record fixture, re-framed into records of `size` bytes.
    func reframe(_ flight: [UInt8], recordSize size: Int) -> [UInt8] {
        let handshake = Array(flight[5...])
        var out: [UInt8] = []
        var offset = 0
        while offset < handshake.count {
            let chunk = handshake[offset..<min(offset + size, handshake.count)]
            out += [22, 3, 1, UInt8(chunk.count >> 8), UInt8(chunk.count & 0xff)] + chunk
            offset += size
        }
        return out
    }

    @Test func givingUpSaysWhetherAnythingArrived() throws {
        var empty = ClientHelloPeek(limit: 64 * 1024)
        let nothing = empty.giveUp(because: "none within 10s")
        #expect(nothing.tls == nil)
        #expect(nothing.sniError == "no client bytes: none within 10s")

        var partial = ClientHelloPeek(limit: 64 * 1024)
        _ = partial.feed(ByteBuffer(bytes: try Self.fixture("curl")[0..<100]))
        let incomplete = partial.giveUp(because: "client closed its side first")
        #expect(incomplete.tls == true)
        #expect(incomplete.sniError == "incomplete ClientHello: client closed its side first")
    }

    /// A plain-HTTP request's head is read across segments, however it is cut, so a Host in a later one counts; the
    /// peek concludes when the head ends, not before.
    @Test func aRequestHeadSplitAnywhereGivesItsNames() {
        let request = Array("GET /hello HTTP/1.1\r\nUser-Agent: x\r\nHost: blocked.example\r\n\r\nbody".utf8)
        let headLength = request.count - 4
        for cut in 1..<headLength {
            var peek = ClientHelloPeek(limit: 64 * 1024)
            #expect(peek.feed(ByteBuffer(bytes: request[..<cut])) == .keepLooking, "cut at \(cut)")
            guard case .done(let result) = peek.feed(ByteBuffer(bytes: request[cut...])) else {
                Issue.record("not concluded, cut at \(cut)")
                continue
            }
            #expect(result.tls == false && result.httpNames?.host == "blocked.example", "cut at \(cut): \(result)")
        }
        // One byte at a time: concluded by the byte that ends the head.
        var peek = ClientHelloPeek(limit: 64 * 1024)
        for (index, byte) in request.enumerated() {
            let step = peek.feed(ByteBuffer(bytes: [byte]))
            if index < headLength - 1 {
                #expect(step == .keepLooking, "byte \(index)")
            } else {
                #expect(step != .keepLooking, "byte \(index)")
                break
            }
        }
    }

    /// Bytes that start like a request line but carry a control byte (git://, which never sends a line end) are
    /// concluded "not HTTP" when that byte comes, not held until the peek gives up.
    @Test func anotherProtocolThatStartsLikeARequestLineIsLetGo() {
        var peek = ClientHelloPeek(limit: 64 * 1024)
        #expect(peek.feed(ByteBuffer(string: "0032git-upload-pack /project.git")) == .keepLooking)
        guard case .done(let result) = peek.feed(ByteBuffer(string: "\u{0}host=example.com\u{0}")) else {
            Issue.record("still looking")
            return
        }
        #expect(result.tls == false && result.httpNames == nil, "\(result)")
    }

    /// A head that does not end cannot be judged: given up on, cut into too many pieces, or longer than the limit.
    @Test func aRequestHeadThatDoesNotEndIsUnjudged() {
        var slow = ClientHelloPeek(limit: 64 * 1024)
        _ = slow.feed(ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        let gaveUp = slow.giveUp(because: "none within 10s")
        #expect(gaveUp.tls == false && gaveUp.httpNames?.invalid == "a request head not complete: none within 10s")

        var pieces = ClientHelloPeek(limit: 64 * 1024)
        var step = pieces.feed(ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        for _ in 0..<ClientHelloPeek.httpRereadLimit where step == .keepLooking {
            step = pieces.feed(ByteBuffer(string: "X: y\r\n"))
        }
        guard case .done(let cut) = step else {
            Issue.record("not concluded")
            return
        }
        #expect(cut.httpNames?.invalid == "a request head sent in more than \(ClientHelloPeek.httpRereadLimit) pieces")

        var long = ClientHelloPeek(limit: 1024)
        _ = long.feed(ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        guard case .done(let full) = long.feed(ByteBuffer(string: "X: " + String(repeating: "a", count: 2000))) else {
            Issue.record("not concluded")
            return
        }
        #expect(full.httpNames?.invalid == "a request head longer than 1024 bytes")
    }

    @Test func helloWithoutServerNameSaysSo() {
        // A minimal TLS 1.2 ClientHello with no extensions.
        var body: [UInt8] = [3, 3] + [UInt8](repeating: 7, count: 32) + [0] + [0, 2, 0x13, 0x01] + [1, 0]
        body = [1, 0, 0, UInt8(body.count)] + body
        let record: [UInt8] = [22, 3, 1, 0, UInt8(body.count)] + body
        var peek = ClientHelloPeek(limit: 64 * 1024)
        guard case .done(let result) = peek.feed(ByteBuffer(bytes: record)) else {
            Issue.record("not concluded")
            return
        }
        #expect(result.tls == true)
        #expect(result.hello?.serverName == nil)
        #expect(result.sniError == "client sent no server name")
    }
}

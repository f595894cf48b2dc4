import ClientHello
import Foundation
import NIOCore
import Testing

/// A real ClientHello, recorded from a real client (see Fixtures/README.md).
struct Fixture: CustomTestStringConvertible, Sendable {
    var name: String
    var alpn: [String]
    var testDescription: String { name }

    static let all: [Fixture] = [
        Fixture(name: "chromium", alpn: ["h2", "http/1.1"]),
        Fixture(name: "curl", alpn: ["h2", "http/1.1"]),
        Fixture(name: "python", alpn: []),
        Fixture(name: "openssl", alpn: ["h2", "http/1.1"]),
        Fixture(name: "node", alpn: ["h2", "http/1.1"]),
        Fixture(name: "java", alpn: []),
    ]

    static let serverName = "hello.fixture.test"

    func bytes() throws -> [UInt8] {
        let url = try #require(Bundle.module.url(forResource: name, withExtension: "bin", subdirectory: "Fixtures"))
        return [UInt8](try Data(contentsOf: url))
    }
}

/// The handshake message inside a fixture's single record, re-framed into records of `size` bytes each.
func reframe(_ flight: [UInt8], recordSize size: Int) -> [UInt8] {
    let handshake = Array(flight[5...])
    var out: [UInt8] = []
    var offset = 0
    while offset < handshake.count {
        let chunk = handshake[offset..<min(offset + size, handshake.count)]
        out += [22, flight[1], flight[2], UInt8(chunk.count >> 8), UInt8(chunk.count & 0xff)]
        out += chunk
        offset += size
    }
    return out
}

@Suite struct ClientHelloParserTests {
    @Test(arguments: Fixture.all)
    func parsesWholeFixture(_ fixture: Fixture) throws {
        let bytes = try fixture.bytes()
        guard case .parsed(let hello) = ClientHelloParser.parse(bytes: bytes) else {
            Issue.record("\(fixture.name): \(ClientHelloParser.parse(bytes: bytes))")
            return
        }
        #expect(hello.serverName == Fixture.serverName)
        #expect(hello.alpn == fixture.alpn)
        #expect(hello.legacyVersion == 0x0303)
    }

    @Test(arguments: Fixture.all)
    func everyShorterPrefixNeedsMoreData(_ fixture: Fixture) throws {
        // Fed one byte at a time: every prefix is "incomplete", never "invalid", until the last byte.
        let bytes = try fixture.bytes()
        for length in 0..<bytes.count {
            let outcome = ClientHelloParser.parse(bytes: bytes[0..<length])
            if outcome != .needMoreData {
                Issue.record("\(fixture.name) prefix \(length): \(outcome)")
                return
            }
        }
        #expect(ClientHelloParser.parse(bytes: bytes) != .needMoreData)
    }

    @Test(arguments: Fixture.all)
    func sameResultAcrossRecordFramings(_ fixture: Fixture) throws {
        let bytes = try fixture.bytes()
        let expected = ClientHelloParser.parse(bytes: bytes)
        for size in [1, 2, 3, 7, 64, 100, 256, 511, 1000, 1500] {
            let reframed = reframe(bytes, recordSize: size)
            #expect(ClientHelloParser.parse(bytes: reframed) == expected, "record size \(size)")
            // And incomplete at every record boundary but the last.
            var offset = 0
            while offset + 5 < reframed.count {
                let length = Int(reframed[offset + 3]) << 8 | Int(reframed[offset + 4])
                offset += 5 + length
                if offset < reframed.count {
                    #expect(ClientHelloParser.parse(bytes: reframed[0..<offset]) == .needMoreData)
                }
            }
        }
    }

    @Test func chromiumHelloIsLargerThanOneSegmentAndOffersECH() throws {
        let bytes = try Fixture.all[0].bytes()
        #expect(bytes.count > 1500)
        guard case .parsed(let hello) = ClientHelloParser.parse(bytes: bytes) else {
            Issue.record("not parsed")
            return
        }
        #expect(hello.offersEncryptedClientHello)
        #expect(hello.supportedVersions.contains(0x0304))
    }

    /// A client offering to resume (pre_shared_key, RFC 8446 §4.2.11) is told apart: its server may accept without
    /// showing a certificate. None of the fixtures (first connections) offers one.
    @Test func aPreSharedKeyOfferIsSeen() throws {
        func hello(extensions: [UInt8]) -> [UInt8] {
            let body: [UInt8] = [0x03, 0x03] + [UInt8](repeating: 7, count: 32) + [0] + [0, 2, 0x13, 0x01] + [1, 0]
                + [UInt8(extensions.count >> 8), UInt8(extensions.count & 0xff)] + extensions
            let handshake: [UInt8] = [1, 0, UInt8(body.count >> 8), UInt8(body.count & 0xff)] + body
            return [22, 3, 1, UInt8(handshake.count >> 8), UInt8(handshake.count & 0xff)] + handshake
        }
        // supported_versions (TLS 1.3), then pre_shared_key with one identity and one binder, as it must come last.
        let versions: [UInt8] = [0, 43, 0, 3, 2, 3, 4]
        let psk: [UInt8] = [0, 41, 0, 15] + [0, 8, 0, 2, 0xaa, 0xbb, 0, 0, 0, 1] + [0, 3, 2, 0xcc, 0xdd]
        guard case .parsed(let resuming) = ClientHelloParser.parse(bytes: hello(extensions: versions + psk)),
            case .parsed(let first) = ClientHelloParser.parse(bytes: hello(extensions: versions))
        else {
            Issue.record("not parsed: \(ClientHelloParser.parse(bytes: hello(extensions: versions + psk))) \(ClientHelloParser.parse(bytes: hello(extensions: versions)))")
            return
        }
        #expect(resuming.offersPreSharedKey && !first.offersPreSharedKey)
        #expect(resuming.offersResumption && !first.offersResumption)
        for fixture in Fixture.all {
            guard case .parsed(let hello) = ClientHelloParser.parse(bytes: try fixture.bytes()) else { continue }
            #expect(!hello.offersPreSharedKey && !hello.offersResumption, "\(fixture.name)")
        }
    }

    @Test func bytesAfterTheHelloDoNotMatter() throws {
        let bytes = try Fixture.all[1].bytes() + [23, 3, 3, 0, 5, 1, 2, 3, 4, 5]
        guard case .parsed(let hello) = ClientHelloParser.parse(bytes: bytes) else {
            Issue.record("not parsed")
            return
        }
        #expect(hello.serverName == Fixture.serverName)
    }

    @Test func parsesFromAByteBufferWithoutConsumingIt() throws {
        var buffer = ByteBuffer()
        buffer.writeBytes([0xff, 0xff])
        buffer.moveReaderIndex(forwardBy: 2)
        buffer.writeBytes(try Fixture.all[2].bytes())
        let before = buffer.readerIndex
        guard case .parsed(let hello) = ClientHelloParser.parse(buffer) else {
            Issue.record("not parsed")
            return
        }
        #expect(hello.serverName == Fixture.serverName)
        #expect(buffer.readerIndex == before)
    }

    @Test func otherProtocolsAreNotTLS() {
        for text in ["GET / HTTP/1.1\r\n", "SSH-2.0-OpenSSH_9.2\r\n", "EHLO x\r\n", "\u{0}"] {
            guard case .notTLS = ClientHelloParser.parse(bytes: Array(text.utf8)) else {
                Issue.record("\(text.debugDescription): \(ClientHelloParser.parse(bytes: Array(text.utf8)))")
                continue
            }
        }
        guard case .notTLS(let reason) = ClientHelloParser.parse(bytes: [0x80, 0x2e, 0x01, 0x03, 0x01]) else {
            Issue.record("SSLv2 hello not recognised")
            return
        }
        #expect(reason.contains("SSLv2"))
    }

    @Test func wrongRecordOrHandshakeTypeIsMalformed() throws {
        var bytes = try Fixture.all[1].bytes()
        bytes[5] = 2  // ServerHello
        guard case .malformed = ClientHelloParser.parse(bytes: bytes) else {
            Issue.record("\(ClientHelloParser.parse(bytes: bytes))")
            return
        }
        // A second record of another type before the hello is complete.
        let framed = reframe(try Fixture.all[1].bytes(), recordSize: 100)
        var broken = Array(framed[0..<105])
        broken += [21, 3, 3, 0, 2, 2, 40]
        guard case .malformed = ClientHelloParser.parse(bytes: broken) else {
            Issue.record("\(ClientHelloParser.parse(bytes: broken))")
            return
        }
    }

    @Test func largerThanTheLimitIsTooLarge() throws {
        let bytes = try Fixture.all[0].bytes()
        #expect(ClientHelloParser.parse(bytes: bytes, limit: 1024) == .tooLarge(limit: 1024))
        // A handshake header announcing 16 MiB.
        let huge: [UInt8] = [22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]
        #expect(ClientHelloParser.parse(bytes: huge) == .tooLarge(limit: ClientHelloParser.defaultLimit))
    }

    @Test(arguments: Fixture.all)
    func truncatedHandshakeLengthsNeverCrash(_ fixture: Fixture) throws {
        // Shrink the declared handshake and record lengths so the body ends early at every point.
        let bytes = try fixture.bytes()
        let bodyLength = bytes.count - 9
        for cut in stride(from: 0, to: bodyLength, by: 3) {
            var broken = Array(bytes[0..<(9 + cut)])
            let recordLength = cut + 4
            broken[3] = UInt8(recordLength >> 8)
            broken[4] = UInt8(recordLength & 0xff)
            broken[6] = 0
            broken[7] = UInt8(cut >> 8)
            broken[8] = UInt8(cut & 0xff)
            switch ClientHelloParser.parse(bytes: broken) {
            case .parsed, .malformed: break
            case let other: Issue.record("cut \(cut): \(other)")
            }
        }
    }

    @Test(arguments: Fixture.all)
    func everySingleByteCorruptionIsHandled(_ fixture: Fixture) throws {
        // No input may crash the parser; each gives some outcome.
        let bytes = try fixture.bytes()
        for index in bytes.indices {
            for value: UInt8 in [0x00, 0xff, bytes[index] ^ 0x01] {
                var mutated = bytes
                mutated[index] = value
                _ = ClientHelloParser.parse(bytes: mutated)
            }
        }
    }

    @Test func randomGarbageNeverCrashes() {
        var generator = SplitMix64(seed: 0x5eed)
        for _ in 0..<5000 {
            let length = Int(generator.next() % 600)
            var bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            if !bytes.isEmpty && generator.next() % 2 == 0 { bytes[0] = 22 }
            if bytes.count > 5 && generator.next() % 2 == 0 { bytes[5] = 1 }
            _ = ClientHelloParser.parse(bytes: bytes)
        }
    }
}

/// A small deterministic generator, so a failure can be replayed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

import HTTP1Codec
import NIOCore
import Testing

/// The body decoder: each framing, fed whole and a byte at a time, and each rule it enforces.
@Suite struct HTTP1BodyDecoderTests {
    struct Decoded: Equatable {
        var body = ""
        var ended = false
        var trailers: [String] = []
        var error: HTTP1ParseError?
        /// What was left in the buffer after the end.
        var rest = ""
    }

    /// Runs `chunks` through a decoder, one after another (the way reads arrive); `eof` ends the input after them.
    func decode(_ framing: HTTP1BodyFraming, _ chunks: [String], eof: Bool = false) -> Decoded {
        var decoder = HTTP1BodyDecoder(framing: framing)
        var decoded = Decoded()
        var buffer = ByteBuffer()
        for chunk in chunks {
            buffer.writeString(chunk)
            loop: while true {
                switch decoder.next(&buffer) {
                case .body(let bytes): decoded.body += String(buffer: bytes)
                case .end(let trailers):
                    decoded.ended = true
                    decoded.trailers = trailers?.fieldStrings.map { "\($0.name)=\($0.value)" } ?? []
                    decoded.rest = String(buffer: buffer)
                    return decoded
                case .needMore: break loop
                case .invalid(let error):
                    decoded.error = error
                    return decoded
                }
            }
        }
        if eof {
            switch decoder.inputEnded() {
            case .end: decoded.ended = true
            case .invalid(let error): decoded.error = error
            default: break
            }
        }
        return decoded
    }

    /// `text` whole, and a byte at a time: both must decode the same.
    func decodeBothWays(_ framing: HTTP1BodyFraming, _ text: String, eof: Bool = false) -> Decoded {
        let whole = decode(framing, [text], eof: eof)
        var dripped = decode(framing, text.map { String($0) }, eof: eof)
        // A byte at a time, the rest is whatever came after the end in the same one-byte read.
        if whole.ended { dripped.rest = whole.rest }
        #expect(whole == dripped, "\(text.debugDescription): whole \(whole), a byte at a time \(dripped)")
        return whole
    }

    @Test func aLengthBodyEndsAtItsLength() {
        #expect(decodeBothWays(.length(5), "hello") == Decoded(body: "hello", ended: true))
        #expect(decode(.length(5), ["helloGET /"]) == Decoded(body: "hello", ended: true, rest: "GET /"))
        #expect(decode(.length(5), ["hel"], eof: true).error == .incompleteMessage)
    }

    @Test func noBodyEndsAtOnce() {
        #expect(decode(.none, ["GET /"]) == Decoded(ended: true, rest: "GET /"))
        #expect(decode(.none, [""]) == Decoded(ended: true))
        #expect(decode(.length(0), ["x"]) == Decoded(ended: true, rest: "x"))
    }

    @Test func aBodyUntilTheCloseEndsWithTheInput() {
        #expect(decodeBothWays(.untilClose, "all of it\r\n0\r\n\r\n", eof: true) == Decoded(body: "all of it\r\n0\r\n\r\n", ended: true))
        #expect(decode(.untilClose, ["x"]).ended == false)
    }

    @Test func chunkedBodies() {
        #expect(decodeBothWays(.chunked, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n") == Decoded(body: "hello world", ended: true))
        // Extensions are dropped; hex in either case; leading zeros.
        #expect(decodeBothWays(.chunked, "A;name=value;q=\"x y\"\r\n0123456789\r\n0000\r\n\r\n")
            == Decoded(body: "0123456789", ended: true))
        #expect(decodeBothWays(.chunked, "a\r\n0123456789\r\n0;last\r\n\r\n") == Decoded(body: "0123456789", ended: true))
        // Trailers.
        #expect(decodeBothWays(.chunked, "1\r\nx\r\n0\r\nChecksum: abc\r\nX-Y: z\r\n\r\n")
            == Decoded(body: "x", ended: true, trailers: ["Checksum=abc", "X-Y=z"]))
        // What follows the body stays in the buffer.
        #expect(decode(.chunked, ["1\r\nx\r\n0\r\n\r\nGET / HTTP/1.1"]) == Decoded(body: "x", ended: true, rest: "GET / HTTP/1.1"))
        // Cut anywhere before the end: an error at EOF, not an end.
        #expect(decode(.chunked, ["1\r\nx\r\n0\r\n"], eof: true).error == .incompleteMessage)
        #expect(decode(.chunked, ["1\r\nx"], eof: true).error == .incompleteMessage)
    }

    @Test(arguments: [
        ("x\r\n", HTTP1ParseError.invalidChunkSize),
        ("\r\n", .invalidChunkSize),
        (";ext\r\n", .invalidChunkSize),
        ("-1\r\n", .invalidChunkSize),
        ("0x1\r\nx\r\n", .invalidChunkSize),
        ("1 \r\nx\r\n0\r\n\r\n", .invalidChunkSize),
        ("1 ;ext\r\nx\r\n0\r\n\r\n", .invalidChunkSize),
        ("1\nx\r\n", .invalidLineEnding),
        ("1\rx\r\n", .invalidLineEnding),
        ("1;a\u{0}b\r\nx\r\n", .invalidChunkExtension),
        ("1;a=b c\r\nx\r\n", .invalidChunkExtension),
        ("1; a\r\nx\r\n", .invalidChunkExtension),
        ("1;=x\r\nx\r\n", .invalidChunkExtension),
        ("1;a=\r\nx\r\n", .invalidChunkExtension),
        ("1;a:b\r\nx\r\n", .invalidChunkExtension),
        ("1;a=\"x\"y\r\nx\r\n", .invalidChunkExtension),
        ("1;a=\"x\\\"y;z\"\r\nx\r\n0\r\n\r\n", nil),
        ("1;a;b=c;d=\"\"\r\nx\r\n0\r\n\r\n", nil),
        ("1;a\nb\r\nx\r\n", .invalidLineEnding),
        ("1\r\nxy\r\n", .invalidChunkEnd),
        ("1\r\nx\n0\r\n\r\n", .invalidChunkEnd),
        ("1\r\nx\r0\r\n\r\n", .invalidChunkEnd),
        ("10000000000000000\r\n", .chunkSizeOverflow),
        ("FFFFFFFFFFFFFFFFF\r\n", .chunkSizeOverflow),
        ("0000000000000000000000000000001\r\nx\r\n0\r\n\r\n", nil),
        ("0\r\nA: b\nC: d\r\n\r\n", .invalidLineEnding),
        ("0\r\n b\r\n\r\n", .obsoleteLineFolding),
        ("0\r\nContent-Length: 5\r\n\r\n", .forbiddenTrailer),
        ("0\r\ntransfer-encoding: chunked\r\n\r\n", .forbiddenTrailer),
        ("0\r\nX: y\r\nConnection: close\r\n\r\n", .forbiddenTrailer),
        ("0\r\nHOST: a.test\r\n\r\n", .forbiddenTrailer),
        ("0\r\n\n", .invalidLineEnding),
    ] as [(String, HTTP1ParseError?)])
    func malformedChunkedBodiesAreRefused(text: String, expected: HTTP1ParseError?) {
        let decoded = decodeBothWays(.chunked, text)
        #expect(decoded.error == expected, "\(text.debugDescription): \(decoded)")
    }

    @Test func chunkExtensionsAreBounded() {
        let long = "1;" + String(repeating: "a", count: HTTP1BodyDecoder.chunkExtensionLimit + 1) + "\r\nx\r\n0\r\n\r\n"
        #expect(decode(.chunked, [long]).error == .invalidChunkExtension)
        let atLimit = "1;" + String(repeating: "a", count: HTTP1BodyDecoder.chunkExtensionLimit - 1) + "\r\nx\r\n0\r\n\r\n"
        #expect(decode(.chunked, [atLimit]).ended)
    }

    @Test func bodyBytesAreSlicesNotCopies() {
        var decoder = HTTP1BodyDecoder(framing: .length(4))
        var buffer = ByteBuffer(string: "abcd")
        guard case .body(let slice) = decoder.next(&buffer) else {
            Issue.record("no body")
            return
        }
        // Same storage: writing through one is not seen by the other only if it was copied.
        slice.withUnsafeReadableBytes { sliceBytes in
            buffer.withVeryUnsafeBytes { all in
                #expect(sliceBytes.baseAddress == all.baseAddress)
            }
        }
    }
}

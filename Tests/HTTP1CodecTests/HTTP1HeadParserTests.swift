import HTTP1Codec
import NIOCore
import Testing

/// The head parser on well-formed heads, fed whole and a byte at a time, and on each rule it enforces.
@Suite struct HTTP1HeadParserTests {
    /// Parses `text` as one head; the buffer left over after it too.
    func parse(_ text: String, kind: HTTP1Head.Kind = .request, limits: HTTP1HeadParser.Limits = .init())
        -> (HTTP1HeadParser.Outcome, rest: String)
    {
        var parser = HTTP1HeadParser(kind: kind, limits: limits)
        var buffer = ByteBuffer(string: text)
        let outcome = parser.parse(&buffer)
        return (outcome, String(buffer: buffer))
    }

    /// Parses `text` fed one byte at a time; the outcome once it is not `.needMore`.
    func parseDripped(_ text: String, kind: HTTP1Head.Kind = .request) -> HTTP1HeadParser.Outcome {
        var parser = HTTP1HeadParser(kind: kind)
        var buffer = ByteBuffer()
        for byte in text.utf8 {
            buffer.writeInteger(byte)
            let outcome = parser.parse(&buffer)
            if case .needMore = outcome { continue }
            return outcome
        }
        return .needMore
    }

    func parsedHead(_ outcome: HTTP1HeadParser.Outcome) -> HTTP1Head? {
        if case .head(let head) = outcome { return head }
        return nil
    }

    func error(_ outcome: HTTP1HeadParser.Outcome) -> HTTP1ParseError? {
        if case .invalid(let error) = outcome { return error }
        return nil
    }

    @Test func aRequestHeadIsFoundWithItsParts() throws {
        let text = "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nX-Empty:\r\nAccept:  text/html \t\r\n\r\nBODY"
        for outcome in [parse(text).0, parseDripped(text)] {
            let head = try #require(parsedHead(outcome))
            #expect(head.method == "GET")
            #expect(head.methodIs("GET"))
            #expect(!head.methodIs("GE"))
            #expect(head.target == "/a?b=c")
            #expect(head.version == (1, 1))
            #expect(head.fieldStrings.map { "\($0.name)=\($0.value)" } == ["Host=example.com", "X-Empty=", "Accept=text/html"])
            #expect(head.nameIs(0, "host"))
            #expect(head.valueIs(2, "text/html"))
            #expect(String(buffer: head.bytes) == "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nX-Empty:\r\nAccept:  text/html \t\r\n\r\n")
        }
        #expect(parse(text).rest == "BODY")
    }

    @Test func aResponseHeadIsFoundWithItsParts() throws {
        let head = try #require(parsedHead(parse("HTTP/1.0 404 Not  Found\r\nServer: x\r\n\r\n", kind: .response).0))
        #expect(head.status == 404)
        #expect(head.reason == "Not  Found")
        #expect(head.version == (1, 0))
        #expect(head.fields.count == 1)
        // No reason phrase, with and without the space before it.
        #expect(self.parsedHead(parse("HTTP/1.1 204 \r\n\r\n", kind: .response).0)?.reason == "")
        #expect(self.parsedHead(parse("HTTP/1.1 204\r\n\r\n", kind: .response).0)?.status == 204)
    }

    @Test func emptyLinesBeforeTheStartLineAreSkipped() throws {
        let (outcome, rest) = parse("\r\n\r\nGET / HTTP/1.1\r\n\r\nGET")
        let head = try #require(parsedHead(outcome))
        #expect(String(buffer: head.bytes) == "GET / HTTP/1.1\r\n\r\n")
        #expect(rest == "GET")
    }

    @Test func twoHeadsInOneBufferComeOneAtATime() throws {
        var parser = HTTP1HeadParser(kind: .request)
        var buffer = ByteBuffer(string: "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nA: b\r\n\r\nGET /3")
        #expect(parsedHead(parser.parse(&buffer))?.target == "/1")
        #expect(parsedHead(parser.parse(&buffer))?.target == "/2")
        guard case .needMore = parser.parse(&buffer) else {
            Issue.record("a head without its end was parsed")
            return
        }
        buffer.writeString(" HTTP/1.1\r\n\r\n")
        #expect(parsedHead(parser.parse(&buffer))?.target == "/3")
        #expect(buffer.readableBytes == 0)
    }

    @Test func incompleteHeadsNeedMore() {
        for text in ["", "GET", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nA: b\r\n", "GET / HTTP/1.1\r\nA: b\r\n\r", "\r\n"] {
            guard case .needMore = parse(text).0 else {
                Issue.record("\(text.debugDescription) was not incomplete")
                continue
            }
        }
    }

    @Test(arguments: [
        // Start line.
        ("GET  / HTTP/1.1\r\n\r\n", HTTP1ParseError.invalidTarget),
        (" GET / HTTP/1.1\r\n\r\n", .invalidMethod),
        ("G(T / HTTP/1.1\r\n\r\n", .invalidMethod),
        ("GET / HTTP/1.1 \r\n\r\n", .invalidVersion),
        ("GET / HTTP/11\r\n\r\n", .invalidVersion),
        ("GET / http/1.1\r\n\r\n", .invalidVersion),
        ("GET /\u{7F} HTTP/1.1\r\n\r\n", .invalidTarget),
        ("GET /a\tb HTTP/1.1\r\n\r\n", .invalidTarget),
        ("GET /\0 HTTP/1.1\r\n\r\n", .invalidTarget),
        ("GET / HTTP/1.1\n\r\n", .invalidLineEnding),
        ("GET / HTTP/1.1\r\r\n\r\n", .invalidLineEnding),
        // Fields.
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", .invalidFieldName),
        ("GET / HTTP/1.1\r\n: a\r\n\r\n", .invalidFieldName),
        ("GET / HTTP/1.1\r\nHo\"st: a\r\n\r\n", .invalidFieldName),
        ("GET / HTTP/1.1\r\nHost\r\n\r\n", .invalidFieldName),
        ("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", .obsoleteLineFolding),
        ("GET / HTTP/1.1\r\n\tA: b\r\n\r\n", .obsoleteLineFolding),
        ("GET / HTTP/1.1\r\nA: b\0c\r\n\r\n", .invalidFieldValue),
        ("GET / HTTP/1.1\r\nA: b\u{7F}\r\n\r\n", .invalidFieldValue),
        ("GET / HTTP/1.1\r\nA: b\u{1B}\r\n\r\n", .invalidFieldValue),
        ("GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", .invalidLineEnding),
        ("GET / HTTP/1.1\r\nA: b\nC: d\r\n\r\n", .invalidLineEnding),
        ("GET / HTTP/1.1\r\nA: b\r\n\n", .invalidLineEnding),
        ("\nGET / HTTP/1.1\r\n\r\n", .invalidLineEnding),
    ])
    func malformedRequestHeadsAreRefused(text: String, expected: HTTP1ParseError) {
        #expect(error(parse(text).0) == expected, "\(text.debugDescription)")
        #expect(error(parseDripped(text)) == expected, "\(text.debugDescription), a byte at a time")
    }

    @Test(arguments: [
        ("HTTP/1.1 20 OK\r\n\r\n", HTTP1ParseError.invalidStatus),
        ("HTTP/1.1 2000 OK\r\n\r\n", .invalidStatus),
        ("HTTP/1.1  200 OK\r\n\r\n", .invalidStatus),
        ("HTTP/1.1 200 O\0K\r\n\r\n", .invalidStatus),
        ("HTTP/1.1 200 OK\n\r\n", .invalidLineEnding),
        ("HTTP/1.1 200 OK\r\nA:\u{1}\r\n\r\n", .invalidFieldValue),
        ("ICY 200 OK\r\n\r\n", .invalidVersion),
    ])
    func malformedResponseHeadsAreRefused(text: String, expected: HTTP1ParseError) {
        #expect(error(parse(text, kind: .response).0) == expected, "\(text.debugDescription)")
        #expect(error(parseDripped(text, kind: .response)) == expected, "\(text.debugDescription), a byte at a time")
    }

    @Test func limitsAreEnforcedWhileTheHeadIsStillComing() {
        let limits = HTTP1HeadParser.Limits(startLine: 20, headerBytes: 30, fields: 2)
        // Past a limit before the line or head ends: refused without waiting for the rest.
        #expect(error(parse("GET /" + String(repeating: "a", count: 30), limits: limits).0) == .startLineTooLong(limit: 20))
        #expect(error(parse("GET / HTTP/1.1\r\nA: " + String(repeating: "a", count: 40), limits: limits).0)
            == .headerBlockTooLarge(limit: 30))
        #expect(error(parse("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits: limits).0) == .tooManyFields(limit: 2))
        // At the limits: accepted.
        #expect(parsedHead(parse("GET /aaaaa HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", limits: limits).0) != nil)
        // Empty lines before the start line count toward it: they cannot be sent forever.
        #expect(error(parse(String(repeating: "\r\n", count: 11), limits: limits).0) == .startLineTooLong(limit: 20))
    }

    @Test func trailerSectionsHaveOnlyFields() throws {
        var parser = HTTP1HeadParser(kind: .trailers)
        var buffer = ByteBuffer(string: "\r\nNEXT")
        let empty = try #require(parsedHead(parser.parse(&buffer)))
        #expect(empty.fields.isEmpty)
        #expect(String(buffer: buffer) == "NEXT")
        buffer = ByteBuffer(string: "Checksum: abc\r\nX: y\r\n\r\n")
        let trailers = try #require(parsedHead(parser.parse(&buffer)))
        #expect(trailers.fieldStrings.map(\.name) == ["Checksum", "X"])
    }
}

/// Framing decided from heads.
@Suite struct HTTP1BodyFramingTests {
    func head(_ text: String, kind: HTTP1Head.Kind = .request) throws -> HTTP1Head {
        var parser = HTTP1HeadParser(kind: kind)
        var buffer = ByteBuffer(string: text)
        guard case .head(let head) = parser.parse(&buffer) else { throw FramingTestError(text: text) }
        return head
    }

    struct FramingTestError: Error { var text: String }

    func request(_ fields: String, method: String = "POST") throws -> Result<HTTP1BodyFraming, HTTP1ParseError> {
        HTTP1BodyFraming.request(try head("\(method) \(method == "CONNECT" ? "a.example:443" : "/") HTTP/1.1\r\n\(fields)\r\n"))
    }

    @Test func requests() throws {
        #expect(try request("") == .success(.none))
        #expect(try request("Content-Length: 12\r\n") == .success(.length(12)))
        #expect(try request("Content-Length: 0\r\n") == .success(.none))
        #expect(try request("Content-Length: 12  \r\n") == .success(.length(12)))
        #expect(try request("Transfer-Encoding: chunked\r\n") == .success(.chunked))
        #expect(try request("Transfer-Encoding: gzip, CHUNKED\r\n") == .success(.chunked))
        #expect(try request("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n") == .success(.chunked))
        // CONNECT reads no body; its framing fields are checked all the same.
        #expect(try request("Content-Length: 3\r\n", method: "CONNECT") == .success(.none))
        #expect(try request("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", method: "CONNECT") == .failure(.ambiguousFraming))
        for refused in [
            "Content-Length: 1\r\nContent-Length: 1\r\n", "Content-Length: 1, 1\r\n", "Content-Length: +1\r\n",
            "Content-Length: 1\t\r\n", "Content-Length: 0x1\r\n", "Content-Length: 1234567890123456789\r\n",
            "Content-Length:\r\n", "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            "Transfer-Encoding:\r\nContent-Length: 3\r\n", "Transfer-Encoding: chunked, gzip\r\n",
            "Transfer-Encoding: chunked, chunked\r\n", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: identity\r\n", "Transfer-Encoding: chunkedx\r\n", "Transfer-Encoding: \"chunked\"\r\n",
            "Transfer-Encoding: chunked,\r\n", "Transfer-Encoding: chunked\r\nTransfer-Encoding:\r\n",
        ] {
            guard case .failure = try request(refused) else {
                Issue.record("\(refused.debugDescription) was framed")
                continue
            }
        }
    }

    @Test func responses() throws {
        func response(_ status: String, _ fields: String, head isHEAD: Bool = false) throws -> Result<HTTP1BodyFraming, HTTP1ParseError> {
            HTTP1BodyFraming.response(try head("HTTP/1.1 \(status)\r\n\(fields)\r\n", kind: .response), requestMethodIsHEAD: isHEAD)
        }
        #expect(try response("200 OK", "") == .success(.untilClose))
        #expect(try response("200 OK", "Content-Length: 5\r\n") == .success(.length(5)))
        #expect(try response("200 OK", "Content-Length: 5\r\n", head: true) == .success(.none))
        #expect(try response("204 No Content", "Content-Length: 5\r\n") == .success(.none))
        #expect(try response("304 Not Modified", "Transfer-Encoding: chunked\r\n") == .success(.none))
        #expect(try response("100 Continue", "") == .success(.none))
        #expect(try response("200 OK", "Transfer-Encoding: chunked\r\n") == .success(.chunked))
        #expect(try response("200 OK", "Transfer-Encoding: gzip\r\n") == .success(.untilClose))
        #expect(try response("200 OK", "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n") == .failure(.ambiguousFraming))
        #expect(try response("200 OK", "Content-Length: 5\r\nContent-Length: 5\r\n") == .failure(.ambiguousFraming))
        #expect(try response("200 OK", "Content-Length: five\r\n") == .failure(.invalidContentLength))
    }
}

/// The parser's eight-bytes-at-a-time loops against a byte-by-byte reading of the same rules, on values and targets
/// made of the bytes that matter, at every position.
@Suite struct HTTP1WordScanTests {
    /// A small deterministic generator (SplitMix64), so a failure replays.
    struct Generator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    func parse(_ bytes: [UInt8]) -> HTTP1HeadParser.Outcome {
        var parser = HTTP1HeadParser(kind: .request)
        var buffer = ByteBuffer(bytes: bytes)
        return parser.parse(&buffer)
    }

    @Test func fieldValues() {
        let alphabet: [UInt8] = [0x20, 0x20, 0x09, 0x61, 0x62, 0x7E, 0x21, 0x80, 0xFF, 0x7F, 0x00, 0x1F, 0x0D, 0x01]
        var generator = Generator(state: 1)
        for round in 0..<20_000 {
            let length = Int(generator.next() % 41)
            // Mostly ordinary bytes, so long runs reach the fast loop; now and then any of the alphabet.
            let value: [UInt8] = (0..<length).map { _ in
                generator.next() % 8 == 0 ? alphabet[Int(generator.next() % UInt64(alphabet.count))] : UInt8(0x61 + generator.next() % 26)
            }
            let head = Array("GET /x HTTP/1.1\r\nX: ".utf8) + value + Array("\r\n\r\n".utf8)
            let valid = value.allSatisfy { $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }
            var trimmed = value[...]
            while let first = trimmed.first, first == 0x20 || first == 0x09 { trimmed = trimmed.dropFirst() }
            while let last = trimmed.last, last == 0x20 || last == 0x09 { trimmed = trimmed.dropLast() }
            switch parse(head) {
            case .head(let parsed):
                #expect(valid, "round \(round): \(value) was taken")
                let got = parsed.withValue(0) { Array($0) }
                #expect(got == Array(trimmed), "round \(round): \(value) read as \(got)")
            case .invalid:
                #expect(!valid, "round \(round): \(value) was refused")
            case .needMore:
                Issue.record("round \(round): \(value) needs more")
            }
        }
    }

    @Test func targets() {
        let alphabet: [UInt8] = [0x21, 0x7E, 0x7F, 0x80, 0xFF, 0x20, 0x09, 0x00, 0x3F, 0x23]
        var generator = Generator(state: 2)
        for round in 0..<20_000 {
            let length = Int(generator.next() % 41)
            let path: [UInt8] = (0..<length).map { _ in
                generator.next() % 8 == 0 ? alphabet[Int(generator.next() % UInt64(alphabet.count))] : UInt8(0x61 + generator.next() % 26)
            }
            let head = Array("GET /".utf8) + path + Array(" HTTP/1.1\r\n\r\n".utf8)
            let valid = path.allSatisfy { $0 > 0x20 && $0 < 0x7F }
            switch parse(head) {
            case .head(let parsed):
                #expect(valid, "round \(round): \(path) was taken")
                #expect(parsed.withTarget { Array($0) } == [UInt8(ascii: "/")] + path)
            case .invalid:
                #expect(!valid, "round \(round): \(path) was refused")
            case .needMore:
                Issue.record("round \(round): \(path) needs more")
            }
        }
    }
}

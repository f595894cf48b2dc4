import ControlPlane
import Foundation
import Testing

@Suite struct RecordJSONTests {
    func metadata() -> ConnectMetadata {
        var metadata = ConnectMetadata(
            eventID: EventID(description: "01a21941-e6fe-79ac-864f-0552b3987684"),
            transport: .connect,
            host: "example.org",
            port: 443,
            client: "127.0.0.1:50432",
            startedAt: "2026-11-26T19:07:59.102Z",
            outcome: .connected
        )
        metadata.resolvedIP = "93.184.215.14"
        metadata.tls = true
        metadata.sni = "example.org"
        metadata.alpn = ["h2", "http/1.1"]
        metadata.sniMismatch = false
        return metadata
    }

    @Test func actionHasTheControlPlaneShapeInAFixedOrder() throws {
        let action = ConnectAction(agent: "egress-agent", target: "example.org:443", metadata: metadata())
        let line = String(decoding: ActionRecord.action(action).jsonLine(), as: UTF8.self)
        #expect(
            line == """
                {"schema_version":"1","agent":"egress-agent","action":{"kind":"connect","target":"example.org:443",\
                "metadata":{"source":"egress","event_id":"01a21941-e6fe-79ac-864f-0552b3987684","transport":"connect",\
                "host":"example.org","port":443,"client":"127.0.0.1:50432","started_at":"2026-11-26T19:07:59.102Z",\
                "outcome":"connected","resolved_ip":"93.184.215.14","tls":true,"sni":"example.org",\
                "alpn":["h2","http/1.1"],"sni_mismatch":false}},"verdict":{"decision":"allow","reason":"observed"}}

                """
        )
        let decoded = try JSONDecoder().decode(ConnectAction.self, from: Data(line.utf8))
        #expect(decoded == action)
    }

    /// An action keeps its fields in a shared box (copies are cheap); it must still behave as a value.
    @Test func aChangedCopyOfAnActionLeavesTheOriginalAsItWas() {
        let original = ConnectAction(agent: "egress-agent", target: "example.org:443", metadata: metadata())
        var changed = original
        #expect(changed == original)
        changed.action.metadata.method = "GET"
        changed.verdict = ConnectAction.Verdict(decision: "block", reason: "policy")
        changed.agent = "other-agent"
        #expect(original.action.metadata.method == nil)
        #expect(original.verdict == .observed)
        #expect(original.agent == "egress-agent")
        #expect(changed.action.metadata.method == "GET")
        #expect(changed.agent == "other-agent")
        #expect(changed != original)
        // Equal fields in two boxes are equal, and hash alike.
        let twin = ConnectAction(agent: "egress-agent", target: "example.org:443", metadata: metadata())
        #expect(twin == original)
        #expect(Set([twin, original]).count == 1)
        #expect(Set([changed, original]).count == 2)
    }

    /// The writer's keys are literals, the decoder's come from `CodingKeys`: with every field set, a record reads
    /// back as itself only if the two agree on every name.
    @Test func everyFieldReadsBackAsItself() throws {
        var metadata = metadata()
        metadata.error = "connection refused"
        metadata.status = 502
        metadata.sniError = "truncated"
        metadata.intercepted = true
        metadata.inspection = "pinned"
        metadata.method = "GET"
        metadata.path = "/v1/x"
        metadata.negotiatedProtocol = "http/1.1"
        metadata.upstreamResumed = true
        metadata.upstreamReusedFrom = "01a21941-e6fe-79ac-864f-0552b3987685"
        metadata.requestHost = "example.org"
        metadata.upgrade = "websocket"
        metadata.requestBodyBytes = 12
        metadata.responseBodyBytes = 3_400
        metadata.connectionID = EventID(description: "01a21941-e6fe-79ac-864f-0552b3987686")
        metadata.originalDst = "10.0.0.1:443"
        metadata.firstSeen = true
        metadata.policy = "deny-list"
        metadata.wouldBlock = false
        let action = ConnectAction(agent: "a", target: "example.org:443", metadata: metadata)
        let line = ActionRecord.action(action).jsonLine()
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])
        let written = try #require((object["action"] as? [String: Any])?["metadata"] as? [String: Any])
        #expect(written.count == 32)  // every key of ConnectMetadata.CodingKeys
        #expect(try JSONDecoder().decode(ConnectAction.self, from: Data(line)) == action)

        let close = CloseRecord(
            agent: "a",
            close: .init(
                eventID: EventID(description: "01a21941-e6fe-79ac-864f-0552b3987687"), target: "example.org:443",
                bytesFromClient: 1, bytesToClient: 2, durationMs: 3, closedBy: .client, reason: "eof", status: 200,
                endedAt: "2026-11-26T19:07:59.102Z"))
        #expect(try JSONDecoder().decode(CloseRecord.self, from: Data(ActionRecord.close(close).jsonLine())) == close)
    }

    @Test func missingSNIIsAnExplicitNull() throws {
        var metadata = metadata()
        metadata.sni = nil
        metadata.tls = false
        metadata.sniError = "not TLS: first byte 0x53 is not a TLS handshake record"
        metadata.alpn = nil
        metadata.sniMismatch = nil
        let line = ActionRecord.action(ConnectAction(agent: "a", target: "t:1", metadata: metadata)).jsonLine()
        let object = try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]
        let fields = (object?["action"] as? [String: Any])?["metadata"] as? [String: Any]
        #expect(fields?.keys.contains("sni") == true)
        #expect(fields?["sni"] is NSNull)
        #expect(fields?["tls"] as? Bool == false)
    }

    @Test func plainHTTPActionHasNoTLSFields() throws {
        var metadata = metadata()
        metadata.transport = .http
        metadata.tls = nil
        metadata.sni = nil
        metadata.alpn = nil
        metadata.sniMismatch = nil
        let line = String(decoding: ActionRecord.action(ConnectAction(agent: "a", target: "t:80", metadata: metadata)).jsonLine(), as: UTF8.self)
        #expect(!line.contains("\"sni\""))
        #expect(!line.contains("\"tls\""))
    }

    @Test func closeRecordRoundTrips() throws {
        let close = CloseRecord(
            agent: "egress-agent",
            close: .init(
                eventID: EventID.generate(),
                target: "[::1]:443",
                bytesFromClient: 517,
                bytesToClient: 1_073_741_824,
                durationMs: 1234,
                closedBy: .upstream,
                reason: "eof",
                status: nil,
                endedAt: WallClock.rfc3339(unixMillis: 0)
            )
        )
        let line = ActionRecord.close(close).jsonLine()
        #expect(line.last == UInt8(ascii: "\n"))
        #expect(line.dropLast().contains(UInt8(ascii: "\n")) == false)
        #expect(try JSONDecoder().decode(CloseRecord.self, from: Data(line)) == close)
        #expect(close.close.endedAt == "1970-01-01T00:00:00.000Z")
    }

    /// Hostile strings (from a SNI, Host or agent name) never break a line and parse back to themselves.
    @Test(arguments: [
        "quote\" backslash\\ slash/", "new\nline\rreturn\ttab", "nul\u{0}bell\u{7}del\u{7f}",
        "line\u{2028}separator\u{2029}", "emoji 🧪 and é", String(repeating: "x\"\\", count: 22_000),
    ])
    func hostileStringsStayOnOneLineAndRoundTrip(_ value: String) throws {
        var metadata = metadata()
        metadata.host = value
        metadata.sni = value
        let action = ConnectAction(agent: value, target: value, metadata: metadata)
        let line = ActionRecord.action(action).jsonLine()
        let withoutNewline = line.dropLast()
        #expect(!withoutNewline.contains(0x0a) && !withoutNewline.contains(0x0d))
        #expect(!String(decoding: line, as: UTF8.self).contains("\u{2028}"))
        #expect(try JSONDecoder().decode(ConnectAction.self, from: Data(line)) == action)
    }

    /// Printable ASCII is copied as it is, but for the quote and the backslash; the bytes on either side of that
    /// range (US, DEL) are escaped.
    @Test func printableASCIIIsCopiedAndItsNeighboursEscaped() {
        let printable = String(decoding: (0x20...0x7e).map { UInt8($0) }, as: UTF8.self)
        var json = JSONWriter()
        json.string("\u{1f}" + printable + "\u{7f}")
        let expected = "\"\\u001f" + printable.replacingOccurrences(of: "\\", with: "\\\\")
            .replacingOccurrences(of: "\"", with: "\\\"") + "\\u007f\""
        #expect(String(decoding: json.bytes, as: UTF8.self) == expected)
    }

    /// Numbers are written digit by digit into the writer's buffer: every length, and both ends of each type.
    @Test func integersAreWrittenAsSwiftPrintsThem() {
        var values: [Int] = [0, 7, -7, Int.min, Int.max]
        var power = 1
        for _ in 0..<18 {
            values += [power - 1, power, power + 1, -power]
            power *= 10
        }
        for value in values {
            var json = JSONWriter()
            json.int(value)
            #expect(String(decoding: json.bytes, as: UTF8.self) == String(value))
        }
        for value in [UInt64.max, UInt64.max / 10, 10_000_000_000_000_000_000, 9_999_999_999_999_999_999, 0] {
            var json = JSONWriter()
            json.int(value)
            #expect(String(decoding: json.bytes, as: UTF8.self) == String(value))
        }
    }

    /// Short keys, one character included (a StaticString may hold one without a pointer), are written whole.
    @Test func aOneCharacterKeyIsWritten() {
        var json = JSONWriter()
        json.beginObject()
        json.field("x", 1)
        json.field("yz", "a")
        json.endObject()
        #expect(String(decoding: json.bytes, as: UTF8.self) == #"{"x":1,"yz":"a"}"#)
    }

    /// The writer starts small and grows as it goes: what it holds after many growths is what was written, in order.
    @Test func theBufferGrowsWithoutLosingBytes() throws {
        var json = JSONWriter(capacity: 1)
        json.beginArray()
        var expected: [String] = []
        for index in 0..<2_000 {
            let value = index % 3 == 0 ? "é\u{2028}\"\(index)" : String(repeating: "x", count: index % 97)
            expected.append(value)
            json.string(value)
        }
        json.endArray()
        json.newline()
        let bytes = json.take()
        #expect(bytes.last == UInt8(ascii: "\n"))
        #expect(try JSONDecoder().decode([String].self, from: Data(bytes)) == expected)
        #expect(json.bytes.isEmpty)
    }

    /// Strings are scanned eight bytes at a time: a byte that needs escaping is found wherever it sits in a word
    /// or in the bytes after the last whole word.
    @Test func aByteThatNeedsEscapingIsFoundAtEveryPosition() throws {
        let specials: [UInt8] = Array(0x00..<0x20) + [0x22, 0x5c, 0x7f]
        for length in [7, 8, 9, 16, 19] {
            for position in 0..<length {
                for special in specials {
                    var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: length)
                    bytes[position] = special
                    let value = String(decoding: bytes, as: UTF8.self)
                    var json = JSONWriter()
                    json.string(value)
                    let written = json.bytes
                    #expect(!written.dropFirst().dropLast().contains { $0 < 0x20 || $0 == 0x7f }, "\(length) \(position) \(special)")
                    #expect(try JSONDecoder().decode(String.self, from: Data(written)) == value)
                }
            }
        }
    }

    @Test func eventIDsAreUUIDv7AndOrderedByTime() {
        let early = EventID.generate(unixMillis: 1_700_000_000_000)
        let late = EventID.generate(unixMillis: 1_700_000_000_001)
        #expect(early.description.count == 36)
        let characters = Array(early.description)
        #expect(characters[14] == "7")
        #expect("89ab".contains(characters[19]))
        #expect(early.description < late.description)
        let many = Set((0..<10_000).map { _ in EventID.generate(unixMillis: 1).description })
        #expect(many.count == 10_000)
    }

    @Test func rfc3339Formatting() {
        #expect(WallClock.rfc3339(unixMillis: 1_796_068_708_123) == "2026-11-30T19:58:28.123Z")
        #expect(WallClock.rfc3339(unixMillis: 0) == "1970-01-01T00:00:00.000Z")
        #expect(WallClock.rfc3339(unixMillis: 951_825_599_999) == "2000-02-29T11:59:59.999Z")
        #expect(WallClock.rfc3339(unixMillis: 4_107_542_400_000) == "2100-03-01T00:00:00.000Z")
    }

    /// The date arithmetic agrees with the C library's `gmtime_r` on every day from 1970 to 2517, at a time of day
    /// that moves through the whole day.
    @Test func rfc3339AgreesWithGmtimeOnEveryDay() {
        var mismatches: [String] = []
        for day in 0..<200_000 where mismatches.count < 3 {
            let seconds = day * 86_400 + (day * 7_919) % 86_400
            var time = time_t(seconds)
            var parts = tm()
            gmtime_r(&time, &parts)
            let expected = String(
                format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
                Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), day % 1000)
            let actual = WallClock.rfc3339(unixMillis: UInt64(seconds) * 1000 + UInt64(day % 1000))
            if actual != expected { mismatches.append("\(actual) != \(expected)") }
        }
        #expect(mismatches.isEmpty)
    }

    @Test func aGapRecordSaysHowManyActionsWereDroppedAndWhen() throws {
        let drops = Spool.Drops(
            records: 412, bytes: 250_000, firstAt: 1_796_068_708_123, lastAt: 1_796_068_709_000,
            oldestStartedAt: "2026-11-30T19:00:00.000Z", newestStartedAt: "2026-11-30T19:05:00.000Z"
        )
        let record = DroppedActionsRecord(agent: "agent-7", eventID: EventID(description: "0192b6e2-0000-7000-8000-000000000001"), drops: drops)
        var json = JSONWriter()
        record.writeJSON(to: &json)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.take())) as? [String: Any])
        #expect(object["schema_version"] as? String == "1")
        #expect(object["agent"] as? String == "agent-7")
        let action = try #require(object["action"] as? [String: Any])
        #expect(action["kind"] as? String == "egress_gap")
        let metadata = try #require(action["metadata"] as? [String: Any])
        #expect(metadata["source"] as? String == "egress")
        #expect(metadata["event_id"] as? String == "0192b6e2-0000-7000-8000-000000000001")
        #expect(metadata["dropped_actions"] as? Int == 412)
        #expect(metadata["oldest_started_at"] as? String == "2026-11-30T19:00:00.000Z")
        #expect(metadata["newest_started_at"] as? String == "2026-11-30T19:05:00.000Z")
        #expect(metadata["dropped_from"] as? String == "2026-11-30T19:58:28.123Z")
    }
}

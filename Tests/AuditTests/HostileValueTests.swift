import Audit
import ControlPlane
import Foundation
import PropertyBased
import Testing

/// SNI, Host and path values come from whoever connects through the proxy. Whatever they hold, an audit line stays
/// one line of JSON that parses back to exactly the value the proxy saw.
@Suite struct HostileValueTests {
    /// Pieces that break naive JSON or line-based logs, and ordinary text between them.
    static let pieces: [String] = [
        "\"", "\\", "\n", "\r", "\t", "\u{0}", "\u{1}", "\u{1f}", "\u{7f}", "\u{2028}", "\u{2029}", "\u{85}",
        "\u{feff}", "é", "漢字", "🦊", "{\"seq\":1,", "\"}\n{", "</script>", "%00", "a", "example.org", " ",
        String(decoding: [0xff, 0xfe, 0xc0, 0x80, 0xed, 0xa0, 0x80], as: UTF8.self),  // invalid UTF-8, as decoded
        String(decoding: [0xe2, 0x80], as: UTF8.self),  // a cut-off U+2028
    ]

    static let hostile = Gen.int(in: 0...(pieces.count - 1)).array(of: 0...40).map { indexes in
        indexes.map { pieces[$0] }.joined()
    }

    static func chainedLine(host: String, sni: String, path: String) -> [UInt8] {
        var metadata = ConnectMetadata(
            eventID: EventID.generate(), transport: .connect, host: host, port: 443, client: "127.0.0.1:1",
            startedAt: "2026-11-26T00:00:00.000Z", outcome: .connected
        )
        metadata.tls = true
        metadata.sni = sni
        metadata.method = "GET"
        metadata.path = path
        metadata.alpn = [sni, path]
        var json = JSONWriter()
        ConnectAction(agent: "egress-agent", target: host + ":443", metadata: metadata).writeJSON(to: &json)
        var chain = AuditChain()
        var line: [UInt8] = []
        chain.append(record: json.take(), to: &line)
        return line
    }

    static func check(host: String, sni: String, path: String) throws {
        let line = chainedLine(host: host, sni: sni, path: path)
        // One line: a single newline, at the end; no raw CR, U+2028 or U+2029 that other readers split on.
        #expect(line.last == UInt8(ascii: "\n"))
        #expect(line.dropLast().allSatisfy { $0 != UInt8(ascii: "\n") && $0 != UInt8(ascii: "\r") && $0 >= 0x20 })
        let text = String(decoding: line.dropLast(), as: UTF8.self)
        #expect(!text.contains("\u{2028}") && !text.contains("\u{2029}"))
        // It parses back to the same values, with Foundation's parser and with the record's own decoder.
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.dropLast())) as? [String: Any])
        let metadata = try #require((object["action"] as? [String: Any])?["metadata"] as? [String: Any])
        #expect(metadata["host"] as? String == host)
        #expect(metadata["sni"] as? String == sni)
        #expect(metadata["path"] as? String == path)
        #expect((object["action"] as? [String: Any])?["target"] as? String == host + ":443")
        let decoded = try JSONDecoder().decode(ConnectAction.self, from: Data(line.dropLast()))
        #expect(decoded.action.metadata.host == host && decoded.action.metadata.sni == sni)
        #expect(decoded.action.metadata.path == path && decoded.action.metadata.alpn == [sni, path])
        // The chain fields are still readable in front of it.
        #expect(AuditLinePrefix.parse(line.dropLast())?.sequence == 1)
    }

    @Test func hostileValuesStayOneParseableLine() async throws {
        await propertyCheck(count: 300, input: Self.hostile, Self.hostile, Self.hostile) { host, sni, path in
            do {
                try Self.check(host: host, sni: sni, path: path)
            } catch {
                Issue.record("\(error)")
            }
        }
    }

    @Test(arguments: [0x00, 0x0a, 0x22, 0x5c, 0x2028, 0xfffd])
    func longValuesSurviveWhole(_ scalar: UInt32) throws {
        // 64 KiB of one awkward character, alone and mixed with text.
        let one = String(Character(Unicode.Scalar(scalar)!))
        let long = String(repeating: one, count: 64 * 1024)
        let mixed = String(repeating: "ab" + one, count: 64 * 1024 / 3)
        try Self.check(host: long, sni: mixed, path: "/" + long)
    }

    @Test func everyScalarBelow0x3000RoundTrips() throws {
        // Each scalar on its own, so an escaping gap for one code point cannot hide among others.
        var all = ""
        for value in UInt32(0)..<0x3000 {
            guard let scalar = Unicode.Scalar(value) else { continue }
            all.unicodeScalars.append(scalar)
        }
        try Self.check(host: all, sni: String(all.reversed()), path: all)
    }
}

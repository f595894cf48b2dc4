import Foundation
import FuzzEntries
import TestSupport
import Testing

/// The proxy's HTTP/1.1 codec against llhttp (`HTTP1Differential`) on the request-head seed corpus, the
/// request-smuggling corpus and cases written for it: the codec is at least as strict, and where both take a
/// request they read it the same.
@Suite struct HTTP1DifferentialTests {
    /// Compares `bytes` whole and cut after every byte; returns how many inputs the codec refused and llhttp took.
    func check(_ name: String, _ bytes: [UInt8], prefixes: Bool = true) -> Int {
        var stricter = 0
        for length in (prefixes ? Array(0...bytes.count) : [bytes.count]) {
            let result = bytes.prefix(length).withUnsafeBytes { HTTP1Differential.compare(UnsafeRawBufferPointer($0)) }
            switch result {
            case .failure(let disagreement):
                Issue.record("\(name) (\(length) of \(bytes.count) bytes): \(disagreement)")
                return stricter
            case .success(let agreement):
                if agreement.codecStricter { stricter += 1 }
            }
        }
        return stricter
    }

    @Test func requestHeadSeedCorpus() throws {
        let inputs = try FuzzCorpusTests.inputs("request-head")
        #expect(inputs.count >= 100)
        for (name, data) in inputs { _ = check(name, [UInt8](data)) }
    }

    @Test func requestSmugglingCorpus() throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("EndToEndTests/smuggling_client.py").path
        let dump = try runCommand("/usr/bin/env", ["python3", script, "--dump"])
        #expect(dump.status == 0, "\(dump.stderr)")
        let cases = dump.stdout.split(separator: "\n").map { line in
            stride(from: 0, to: line.count, by: 2).map { offset -> UInt8 in
                let start = line.index(line.startIndex, offsetBy: offset)
                return UInt8(line[start..<line.index(start, offsetBy: 2)], radix: 16)!
            }
        }
        #expect(cases.count >= 160)
        for (index, bytes) in cases.enumerated() { _ = check("smuggling case \(index)", bytes, prefixes: false) }
    }

    /// Cases where the codec is deliberately stricter than llhttp, each refused; and ones it must take as llhttp does.
    @Test func writtenCases() {
        let taken = [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b;c=\"d\"\r\nabc\r\n000\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
            "GET /\u{E9} HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX: caf\u{E9} \r\n\r\n",
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\u{1}\u{2}binary",
            "PROPFIND /d HTTP/1.1\r\nDepth: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nA: b\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nA: caf\u{E9}\r\n\r\n",
        ]
        for text in taken { #expect(check(text.debugDescription, Array(text.utf8)) == 0, "\(text.debugDescription)") }
    }
}

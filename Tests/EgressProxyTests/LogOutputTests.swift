import Foundation
import Logging
import Testing

@testable import EgressProxy

/// The batched standard error: lines from many threads arrive whole, none lost, in one piece each, after
/// `flush`; text and JSON handlers write through it.
@Suite struct LogOutputTests {
    func temporaryFile() -> (path: String, fd: Int32) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kz-log-\(UUID().uuidString)").path
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o600)
        return (path, fd)
    }

    @Test func linesFromManyThreadsArriveWholeAndNoneIsLost() throws {
        let (path, fd) = temporaryFile()
        defer {
            close(fd)
            unlink(path)
        }
        let output = LogOutput(fd: fd)
        let threads = 4
        let perThread = 2_500
        DispatchQueue.concurrentPerform(iterations: threads) { thread in
            for index in 0..<perThread {
                let line = "thread=\(thread) line=\(index) " + String(repeating: "x", count: index % 300)
                output.write(Array(line.utf8), urgent: index % 997 == 0)
            }
        }
        output.flush()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(lines.count == threads * perThread)
        #expect(text.hasSuffix("\n"))
        var seen = Set<String>()
        for line in lines {
            let parts = line.split(separator: " ")
            #expect(parts.count >= 2 && parts[0].hasPrefix("thread=") && parts[1].hasPrefix("line="), "\(line)")
            let index = Int(parts[1].dropFirst(5)) ?? -1
            #expect(line.hasSuffix(String(repeating: "x", count: index % 300)), "a line was cut or mixed: \(line)")
            seen.insert(String(parts[0] + " " + parts[1]))
        }
        #expect(seen.count == threads * perThread, "every line exactly once")
    }

    @Test func textAndJSONHandlersWriteOneLineEach() throws {
        let (path, fd) = temporaryFile()
        defer {
            close(fd)
            unlink(path)
        }
        let output = LogOutput(fd: fd)
        var text = Logger(label: "kaizen-egress", factory: { TextLogHandler(label: $0, level: .info, output: output) })
        text[metadataKey: "agent"] = "a"
        text.info("hello", metadata: ["b": "2"])
        text.debug("not at info")
        let json = Logger(label: "kaizen-egress", factory: { JSONLogHandler(label: $0, level: .info, output: output) })
        json.warning("quote \" and\nnewline", metadata: ["k": "v"])
        output.flush()
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2, "\(lines)")
        #expect(lines[0].hasSuffix(" info kaizen-egress: agent=a b=2 [EgressProxyTests] hello"), "\(lines[0])")
        let object = try JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: Any]
        #expect(object?["msg"] as? String == "quote \" and\nnewline")
        #expect(object?["level"] as? String == "warning" && object?["k"] as? String == "v")
    }
}

@testable import EgressProxy
import NIOCore
import Testing

@Suite struct PlainRequestWatcherTests {
    func hosts(_ findings: [PlainRequestWatcher.Finding]) -> [String?] {
        findings.map { if case .head(let names, _) = $0 { names.host } else { nil } }
    }

    /// Each head is found past the bodies before it (a stated length, chunked), however the bytes are cut, with where
    /// it starts in the tunnel's bytes.
    @Test func everyHeadIsFoundPastTheBodiesBeforeIt() {
        let first = "POST /a HTTP/1.1\r\nHost: one.test\r\nContent-Length: 5\r\n\r\nGET /"
        let second = "PUT /b HTTP/1.1\r\nHost: two.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nGET\r\n0\r\n\r\n"
        let third = "GET /c HTTP/1.1\r\nHost: blocked.test\r\n\r\n"
        let stream = Array((first + second + third).utf8)
        for cut in stride(from: 1, to: stream.count, by: 7) {
            var watcher = PlainRequestWatcher(limit: 65_536)
            let findings = watcher.feed(ByteBuffer(bytes: stream[..<cut])) + watcher.feed(ByteBuffer(bytes: stream[cut...]))
            #expect(hosts(findings) == ["one.test", "two.test", "blocked.test"], "cut at \(cut)")
            if case .head(_, let start) = findings.last {
                #expect(start == first.utf8.count + second.utf8.count, "cut at \(cut)")
            }
        }
    }

    /// After an Upgrade request the bytes are another protocol's: not read. Bytes that cannot be framed are said so.
    @Test func anUpgradeEndsItAndUnframableBytesAreUnreadable() {
        var upgraded = PlainRequestWatcher(limit: 65_536)
        let findings = upgraded.feed(ByteBuffer(string: "GET /ws HTTP/1.1\r\nHost: one.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\u{81}\u{5}hello"))
        #expect(hosts(findings) == ["one.test"] && upgraded.stopped)
        #expect(upgraded.feed(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n")).isEmpty)

        var broken = PlainRequestWatcher(limit: 65_536)
        let bad = broken.feed(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: one.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"))
        guard case .unreadable(_, let start) = bad.first else {
            Issue.record("\(bad)")
            return
        }
        #expect(start == 0 && broken.stopped)
    }
}

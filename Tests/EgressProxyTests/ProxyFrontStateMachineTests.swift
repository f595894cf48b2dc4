@testable import EgressProxy
import NIOCore
import NIOHTTP1
import Testing

@Suite struct ProxyFrontStateMachineTests {
    typealias Machine = ProxyFrontHandler.StateMachine

    /// A request head; a plain-HTTP one gets the `Host` every HTTP/1.1 request must carry unless `headers` has one.
    func head(_ method: HTTPMethod, _ uri: String, _ headers: HTTPHeaders = [:], version: HTTPVersion = .http1_1)
        -> HTTPRequestHead
    {
        var headers = headers
        if method != .CONNECT, !headers.contains(name: "host") { headers.add(name: "Host", value: "example.org") }
        return HTTPRequestHead(version: version, method: method, uri: uri, headers: headers)
    }

    /// RFC 9112 §3.2: two Host headers are refused, and so is an HTTP/1.1 request without one (HTTP/1.0 may omit it).
    @Test func oneHostHeader() {
        func answer(_ headers: HTTPHeaders, version: HTTPVersion = .http1_1) -> Machine.Action? {
            var machine = Machine()
            return machine.requestHead(HTTPRequestHead(version: version, method: .GET, uri: "http://example.org/", headers: headers)).first
        }
        #expect(answer(["Host": "a", "host": "b"]) == .respondError(ProxyError.badRequest("two Host headers")))
        #expect(answer([:]) == .respondError(ProxyError.badRequest("an HTTP/1.1 request needs a Host header")))
        #expect(answer([:], version: .http1_0) == .connectUpstream(plain))
        #expect(answer(["Host": "other.example"]) == .connectUpstream(plain))
    }

    let example = Destination(host: "example.org", port: 443, isIPLiteral: false)
    let plain = Destination(host: "example.org", port: 80, isIPLiteral: false)

    @Test func connectDialsThenBecomesATunnel() {
        var machine = Machine()
        #expect(machine.requestHead(head(.CONNECT, "example.org:443")) == [.dialTunnel(example)])
        #expect(machine.requestEnd(nil) == [])
        #expect(machine.tunnelConnected() == [.establishTunnel])
        #expect(machine.state == .tunnel)
    }

    @Test func connectFailureAnswersWithTheDialError() {
        var machine = Machine()
        _ = machine.requestHead(head(.CONNECT, "example.org:443"))
        let error = ProxyError.dial(.init(status: 504, reason: "connect timeout after 10s", proxyStatusError: "connection_timeout"))
        #expect(machine.connectFailed(error) == [.respondError(error)])
        #expect(machine.state == .closed)
        #expect(machine.tunnelConnected() == [])
    }

    @Test(arguments: ["example.org", "example.org:0", "[::1", "user@example.org:443"])
    func badConnectTargetIs400(_ target: String) {
        var machine = Machine()
        let actions = machine.requestHead(head(.CONNECT, target))
        guard case .respondError(let error) = actions.first else {
            Issue.record("\(actions)")
            return
        }
        #expect(error.status == .badRequest)
        #expect(machine.state == .closed)
    }

    @Test(arguments: ["/", "/index.html", "https://example.org/", "ftp://example.org/"])
    func nonProxyRequestsAre400(_ uri: String) {
        var machine = Machine()
        guard case .respondError(let error) = machine.requestHead(head(.GET, uri)).first else {
            Issue.record("not rejected")
            return
        }
        #expect(error.status == .badRequest)
    }

    @Test func plainRequestBuffersBodyUntilTheUpstreamIsReady() {
        var machine = Machine()
        #expect(machine.requestHead(head(.POST, "http://example.org/up", ["Content-Length": "3"])) == [.connectUpstream(plain)])
        let body = ByteBuffer(string: "abc")
        #expect(machine.requestBody(body) == [])
        #expect(machine.requestEnd(nil) == [])
        let actions = machine.upstreamReady()
        guard case .writeUpstream(let parts) = actions.first, actions.count == 1 else {
            Issue.record("\(actions)")
            return
        }
        #expect(parts.count == 3)
        guard case .head(let outbound) = parts[0] else {
            Issue.record("first part is not the head")
            return
        }
        #expect(outbound.uri == "/up")
        #expect(outbound.headers["Host"] == ["example.org"])
        #expect(parts[1] == .body(.byteBuffer(body)))
        #expect(parts[2] == .end(nil))
    }

    @Test func exchangeCompletesWhenBothSidesEndAndKeepsAlive() {
        var machine = Machine()
        _ = machine.requestHead(head(.GET, "http://example.org/"))
        _ = machine.requestEnd(nil)
        _ = machine.upstreamReady()
        let response = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["Content-Length": "2"])
        #expect(machine.responseHead(response).count == 1)
        #expect(machine.responseBody(ByteBuffer(string: "ok")) == [.writeClient(.body(.byteBuffer(ByteBuffer(string: "ok"))))])
        #expect(machine.responseEnd(nil) == [.writeClient(.end(nil)), .completeExchange(keepClient: true, keepUpstream: true)])
        #expect(machine.state == .idle)
        // The next request on the same connection goes to another host.
        #expect(machine.requestHead(head(.GET, "http://other.example:8080/")) == [.connectUpstream(Destination(host: "other.example", port: 8080, isIPLiteral: false))])
    }

    @Test func responseBeforeRequestEndWaitsForTheRequest() {
        var machine = Machine()
        _ = machine.requestHead(head(.POST, "http://example.org/", ["Content-Length": "10"]))
        _ = machine.upstreamReady()
        _ = machine.responseHead(HTTPResponseHead(version: .http1_1, status: .payloadTooLarge, headers: ["Connection": "close", "Content-Length": "0"]))
        #expect(machine.responseEnd(nil) == [.writeClient(.end(nil))])
        #expect(machine.requestEnd(nil) == [.writeUpstream([.end(nil)]), .completeExchange(keepClient: true, keepUpstream: false)])
    }

    @Test func clientConnectionCloseAndHTTP10CloseAfterTheResponse() {
        for request in [head(.GET, "http://example.org/", ["Connection": "close"]), head(.GET, "http://example.org/", version: .http1_0), head(.GET, "http://example.org/", ["Upgrade": "websocket", "Connection": "Upgrade"])] {
            var machine = Machine()
            _ = machine.requestHead(request)
            _ = machine.requestEnd(nil)
            _ = machine.upstreamReady()
            let actions = machine.responseHead(HTTPResponseHead(version: .http1_1, status: .ok))
            guard case .writeClient(.head(let out)) = actions.first else {
                Issue.record("\(actions)")
                continue
            }
            #expect(out.headers["Connection"] == ["close"])
            #expect(machine.responseEnd(nil).last == .completeExchange(keepClient: false, keepUpstream: true))
            #expect(machine.state == .closed)
        }
    }

    @Test func informationalResponsesPassThroughBeforeTheFinalOne() {
        var machine = Machine()
        _ = machine.requestHead(head(.POST, "http://example.org/", ["Expect": "100-continue", "Content-Length": "1"]))
        _ = machine.upstreamReady()
        #expect(machine.responseHead(HTTPResponseHead(version: .http1_1, status: .continue)).count == 1)
        #expect(machine.responseBody(ByteBuffer(string: "x")) == [])  // no body before the final head
        #expect(machine.responseHead(HTTPResponseHead(version: .http1_1, status: .created, headers: ["Content-Length": "0"])).count == 1)
        _ = machine.requestEnd(nil)
        #expect(machine.responseEnd(nil).last == .completeExchange(keepClient: true, keepUpstream: true))
    }

    /// A body with no length ends with the upstream's connection: relayed the same way, it ends the client's.
    @Test func aResponseWithNoLengthEndsTheClientsConnection() {
        var machine = Machine()
        _ = machine.requestHead(head(.GET, "http://example.org/"))
        _ = machine.upstreamReady()
        _ = machine.requestEnd(nil)
        guard case .writeClient(.head(let sent)) = machine.responseHead(HTTPResponseHead(version: .http1_1, status: .ok)).first else {
            Issue.record("expected the head to be written")
            return
        }
        #expect(sent.headers["Connection"] == ["close"])
        #expect(machine.responseEnd(nil).last == .completeExchange(keepClient: false, keepUpstream: true))
    }

    @Test func upstreamClosingBeforeTheResponseIs502AfterTheHeadIsAReset() {
        var before = Machine()
        _ = before.requestHead(head(.GET, "http://example.org/"))
        _ = before.upstreamReady()
        guard case .respondError(let error) = before.upstreamClosed(reason: "connection reset").first else {
            Issue.record("no error response")
            return
        }
        #expect(error.status == .badGateway)

        var during = Machine()
        _ = during.requestHead(head(.GET, "http://example.org/"))
        _ = during.upstreamReady()
        _ = during.responseHead(HTTPResponseHead(version: .http1_1, status: .ok))
        // A body cut after its head is not ended with a FIN, which a body with no length would take as its end.
        guard case .abortClient(let reason) = during.upstreamClosed(reason: "connection reset").first else {
            Issue.record("client not reset")
            return
        }
        #expect(reason == "upstream closed mid-response: connection reset")
        #expect(during.state == .closed)
    }

    /// A response the decoder refused is the upstream's fault but not its close: 502 saying the response was unusable
    /// (never sent again, even on a kept connection), or a reset with that reason once the response had started.
    @Test func anInvalidResponseIsUnusableNotAClose() {
        var before = Machine()
        _ = before.requestHead(head(.GET, "http://example.org/"))
        _ = before.requestEnd(nil)
        _ = before.upstreamReady(reused: true)
        guard case .respondError(let error) = before.upstreamClosed(reason: "unexpected content-length header", invalidResponse: true).first
        else {
            Issue.record("no error response")
            return
        }
        #expect(error.status == .badGateway && error.reason == "unusable upstream response: unexpected content-length header")

        var during = Machine()
        _ = during.requestHead(head(.GET, "http://example.org/"))
        _ = during.upstreamReady()
        _ = during.responseHead(HTTPResponseHead(version: .http1_1, status: .ok))
        guard case .abortClient(let reason) = during.upstreamClosed(reason: "invalid chunk size", invalidResponse: true).first else {
            Issue.record("client not reset")
            return
        }
        #expect(reason == "unusable upstream response mid-way: invalid chunk size")
    }

    /// Whether the upstream closing before any response makes the machine dial again (true) or answer 502.
    func retries(_ request: HTTPRequestHead, reused: Bool = true) -> Bool {
        var machine = Machine()
        _ = machine.requestHead(request)
        _ = machine.requestEnd(nil)
        _ = machine.upstreamReady(reused: reused)
        let actions = machine.upstreamClosed(reason: "connection closed")
        if actions == [.retryUpstream(plain)] { return true }
        guard case .respondError(let error) = actions.first, error.status == .badGateway else {
            Issue.record("\(actions)")
            return false
        }
        return false
    }

    @Test func aKeptUpstreamClosingBeforeTheAnswerGetsTheRequestAgainOnANewConnectionOnce() {
        var machine = Machine()
        _ = machine.requestHead(head(.GET, "http://example.org/a", ["Host": "example.org"]))
        _ = machine.requestEnd(nil)
        guard case .writeUpstream(let first) = machine.upstreamReady(reused: true).first else {
            Issue.record("nothing written")
            return
        }
        #expect(machine.upstreamClosed(reason: "connection closed") == [.retryUpstream(plain)])
        // The same head (as forwarded) and its end, once the new connection is ready; it is not a kept one.
        #expect(first.count == 2)
        #expect(machine.upstreamReady() == [.writeUpstream(first)])
        guard case .respondError(let error) = machine.upstreamClosed(reason: "connection closed").first else {
            Issue.record("a second close was not answered 502")
            return
        }
        #expect(error.status == .badGateway)
        #expect(machine.state == .closed)
    }

    @Test func onlyAnIdempotentRequestWithNoBodyOnAKeptConnectionIsSentAgain() {
        #expect(retries(head(.GET, "http://example.org/")))
        #expect(retries(head(.HEAD, "http://example.org/")))
        #expect(retries(head(.DELETE, "http://example.org/")))
        #expect(retries(head(.PUT, "http://example.org/", ["Content-Length": "0"])))
        // A new connection that closed: the upstream's answer, passed on as 502.
        #expect(!retries(head(.GET, "http://example.org/"), reused: false))
        // Not idempotent, or a body that went and is gone.
        #expect(!retries(head(.POST, "http://example.org/")))
        #expect(!retries(head(.PATCH, "http://example.org/", ["Content-Length": "0"])))
        #expect(!retries(head(.PUT, "http://example.org/", ["Content-Length": "3"])))
        #expect(!retries(head(.GET, "http://example.org/", ["Transfer-Encoding": "chunked"])))
    }

    @Test func aKeptUpstreamClosingAfterTheResponseHeadIsStillAReset() {
        var machine = Machine()
        _ = machine.requestHead(head(.GET, "http://example.org/"))
        _ = machine.upstreamReady(reused: true)
        _ = machine.responseHead(HTTPResponseHead(version: .http1_1, status: .ok))
        guard case .abortClient = machine.upstreamClosed(reason: "connection reset").first else {
            Issue.record("client not reset")
            return
        }
    }

    @Test func aSecondHeadWhileBusyClosesTheConnection() {
        var machine = Machine()
        _ = machine.requestHead(head(.GET, "http://example.org/"))
        #expect(machine.requestHead(head(.GET, "http://example.org/")) == [.closeClient(reason: "request head out of order")])
    }
}

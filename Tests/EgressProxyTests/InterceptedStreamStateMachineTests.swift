@testable import EgressProxy
import Testing

@Suite struct InterceptedStreamStateMachineTests {
    typealias Machine = InterceptedStreamStateMachine

    @Test func aStreamIsReportedOnceWhenBothSidesHaveEnded() {
        var machine = Machine(reportQuery: false)
        #expect(!machine.hasRequest)
        #expect(machine.requestHeaders(method: "POST", path: "/v1/items?key=secret", extendedProtocol: nil, endStream: false) == .forward)
        #expect(machine.hasRequest)
        #expect(machine.requestData(5, endStream: false) == .forward)
        #expect(machine.requestData(3, endStream: true) == .forward)
        #expect(machine.responseHeaders(status: 100, endStream: false) == .forward)  // informational: not the status
        #expect(machine.responseHeaders(status: 201, endStream: false) == .forward)
        #expect(machine.responseData(endStream: false) == .forward)
        #expect(machine.responseWritten(7, endStream: false) == nil)
        var expected = Machine.Exchange(method: "POST", path: "/v1/items")
        expected.requestBodyBytes = 8
        expected.responseBodyBytes = 7
        expected.status = 201
        // gRPC: the trailers end the response; it is complete when they have been written to the client.
        #expect(machine.responseHeaders(status: nil, endStream: true) == .forward)
        #expect(machine.responseEnded && !machine.isReported)
        #expect(machine.responseWritten(0, endStream: true) == expected)
        #expect(machine.isReported)
        // Nothing is reported twice: a later close or reset adds nothing.
        #expect(machine.ended("stream closed") == nil)
    }

    @Test func theResponseMayEndBeforeTheRequest() {
        var machine = Machine(reportQuery: true)
        _ = machine.requestHeaders(method: "PUT", path: "/upload?part=1", extendedProtocol: nil, endStream: false)
        #expect(machine.responseHeaders(status: 413, endStream: true) == .forward)
        #expect(machine.responseWritten(0, endStream: true) == nil)
        var expected = Machine.Exchange(method: "PUT", path: "/upload?part=1")
        expected.status = 413
        expected.requestBodyBytes = 2
        #expect(machine.requestData(2, endStream: true) == .forwardAndReport(expected))
    }

    @Test func anExtendedConnectIsReportedWhenItsTunnelIsUpAndItsBytesAreNot() {
        var machine = Machine(reportQuery: false)
        #expect(machine.requestHeaders(method: "CONNECT", path: "/chat?room=1", extendedProtocol: "WebSocket", endStream: false) == .forward)
        var expected = Machine.Exchange(method: "CONNECT", path: "/chat")
        expected.status = 200
        expected.upgraded = true
        expected.upgrade = "websocket"
        #expect(machine.responseHeaders(status: 200, endStream: false) == .forwardAndReport(expected))
        #expect(machine.requestData(100, endStream: false) == .forward)
        #expect(machine.responseData(endStream: true) == .forward)
        #expect(machine.responseWritten(100, endStream: true) == nil)
        #expect(machine.requestData(0, endStream: true) == .forward)
        #expect(machine.ended("closed") == nil)
    }

    @Test func aRefusedTunnelIsAnOrdinaryExchange() {
        var machine = Machine(reportQuery: false)
        _ = machine.requestHeaders(method: "CONNECT", path: "/chat", extendedProtocol: "websocket", endStream: false)
        #expect(machine.responseHeaders(status: 404, endStream: true) == .forward)
        #expect(machine.responseWritten(0, endStream: true) == nil)
        guard case .forwardAndReport(let exchange) = machine.requestData(0, endStream: true) else {
            Issue.record("not reported")
            return
        }
        #expect(exchange.status == 404 && !exchange.upgraded)
    }

    @Test func aResetStreamIsReportedWithWhyAndOnlyOnce() {
        var machine = Machine(reportQuery: false)
        _ = machine.requestHeaders(method: "GET", path: "/slow", extendedProtocol: nil, endStream: true)
        _ = machine.responseHeaders(status: 200, endStream: false)
        _ = machine.responseData(endStream: false)
        _ = machine.responseWritten(10, endStream: false)
        let ended = machine.ended("stream reset by the client: cancel")
        #expect(ended?.0.status == 200 && ended?.0.responseBodyBytes == 10 && ended?.error == "stream reset by the client: cancel")
        #expect(machine.ended("again") == nil)
        // Frames after the end are still passed on (the stream handlers drop what a closed stream cannot take).
        #expect(machine.responseData(endStream: true) == .forward)
        #expect(machine.responseWritten(5, endStream: true) == nil)
    }

    /// What the client was sent is what counts: DATA read from the upstream but never written to the client (a
    /// client that stopped reading, then reset the stream) is not in the reported size.
    @Test func theResponseSizeIsWhatWasWrittenToTheClient() {
        var machine = Machine(reportQuery: false)
        _ = machine.requestHeaders(method: "GET", path: "/big", extendedProtocol: nil, endStream: true)
        _ = machine.responseHeaders(status: 200, endStream: false)
        for _ in 0..<8 { #expect(machine.responseData(endStream: false) == .forward) }  // 8 × 16 KiB read
        for _ in 0..<4 { #expect(machine.responseWritten(16_384, endStream: false) == nil) }  // half of it written
        let ended = machine.ended("stream reset by the client: cancel")
        #expect(ended?.0.responseBodyBytes == 65_536)
        // A whole response read is not complete until its end has been written.
        var whole = Machine(reportQuery: false)
        _ = whole.requestHeaders(method: "GET", path: "/", extendedProtocol: nil, endStream: true)
        _ = whole.responseHeaders(status: 200, endStream: false)
        #expect(whole.responseData(endStream: true) == .forward)
        #expect(!whole.isReported)
        #expect(whole.responseWritten(3, endStream: true)?.responseBodyBytes == 3)
    }

    @Test func framesBeforeTheRequestAreDroppedAndAnAnswerIsReportedOnce() {
        var machine = Machine(reportQuery: false)
        #expect(machine.requestData(5, endStream: false) == .drop)
        #expect(machine.responseHeaders(status: 200, endStream: false) == .drop)
        #expect(machine.ended("closed") == nil)
        _ = machine.requestHeaders(method: "GET", path: "/blocked", extendedProtocol: nil, endStream: true)
        #expect(machine.answered(status: 403)?.status == 403)
        #expect(machine.answered(status: 403) == nil)
        #expect(machine.ended("closed") == nil)
    }
}

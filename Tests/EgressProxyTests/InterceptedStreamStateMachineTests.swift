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
        #expect(machine.responseData(7, endStream: false) == .forward)
        var expected = Machine.Exchange(method: "POST", path: "/v1/items")
        expected.requestBodyBytes = 8
        expected.responseBodyBytes = 7
        expected.status = 201
        // gRPC: the trailers end the response.
        #expect(machine.responseHeaders(status: nil, endStream: true) == .forwardAndReport(expected))
        #expect(machine.isReported)
        // Nothing is reported twice: a later close or reset adds nothing.
        #expect(machine.ended("stream closed") == nil)
    }

    @Test func theResponseMayEndBeforeTheRequest() {
        var machine = Machine(reportQuery: true)
        _ = machine.requestHeaders(method: "PUT", path: "/upload?part=1", extendedProtocol: nil, endStream: false)
        #expect(machine.responseHeaders(status: 413, endStream: true) == .forward)
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
        #expect(machine.responseData(100, endStream: true) == .forward)
        #expect(machine.requestData(0, endStream: true) == .forward)
        #expect(machine.ended("closed") == nil)
    }

    @Test func aRefusedTunnelIsAnOrdinaryExchange() {
        var machine = Machine(reportQuery: false)
        _ = machine.requestHeaders(method: "CONNECT", path: "/chat", extendedProtocol: "websocket", endStream: false)
        #expect(machine.responseHeaders(status: 404, endStream: true) == .forward)
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
        _ = machine.responseData(10, endStream: false)
        let ended = machine.ended("stream reset by the client: cancel")
        #expect(ended?.0.status == 200 && ended?.0.responseBodyBytes == 10 && ended?.error == "stream reset by the client: cancel")
        #expect(machine.ended("again") == nil)
        // Frames after the end are still passed on (the stream handlers drop what a closed stream cannot take).
        #expect(machine.responseData(5, endStream: true) == .forward)
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

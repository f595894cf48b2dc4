@testable import EgressProxy
import NIOCore
import NIOPosix
import NIOEmbedded
import Testing

/// The read-ahead below the client's TLS: its decisions alone, then in a pipeline between a counter of the reads
/// that reach the socket and a handler above that pauses reading the way the intercepted client handler does.
@Suite struct ReadAheadTests {
    // MARK: the state machine

    @Test func whileTheHandlersAboveWantToReadBytesGoStraightUp() {
        var machine = ReadAheadStateMachine(limit: 100)
        let bytes = ByteBuffer(string: "GET / HTTP/1.1\r\n")
        let result1 = machine.received(bytes)
        #expect(result1 == .passOn(bytes))
        let result2 = machine.readCompleted()
        #expect(result2)
        // autoRead's next read: the handlers above ask again, so the read goes to the socket.
        let result3 = machine.readRequested()
        #expect(result3 == .readBelow)
        #expect(!machine.keepReadingBelow())
    }

    @Test func aPausedReaderGetsWhatCameMeanwhileAsOneReadInOneBuffer() {
        var machine = ReadAheadStateMachine(limit: 100)
        let first = machine.received(ByteBuffer(string: "first"))
        #expect(first == .passOn(ByteBuffer(string: "first")))
        let completed = machine.readCompleted()
        #expect(completed)
        // The handlers above do not ask again (a request awaits its response): this handler keeps reading.
        #expect(machine.keepReadingBelow())
        let second = machine.received(ByteBuffer(string: "second"))
        #expect(second == .hold)
        let completedHeld = machine.readCompleted()
        #expect(!completedHeld)
        #expect(machine.keepReadingBelow())
        let third = machine.received(ByteBuffer(string: "third"))
        #expect(third == .hold)
        #expect(machine.heldByteCount == 11)

        let delivery = machine.readRequested()
        #expect(delivery == .deliver(ByteBuffer(string: "secondthird")))
        let duringDelivery = machine.readRequested()
        #expect(duringDelivery == .none)  // asked for while delivering: the read that follows covers it
        machine.delivered()
        let next = machine.readRequested()
        #expect(next == .readBelow)
        #expect(machine.heldByteCount == 0)
    }

    @Test func anEndOfInputTakesWhatIsHeldFirstAndStopsReading() {
        var machine = ReadAheadStateMachine(limit: 100)
        _ = machine.received(ByteBuffer(string: "request"))
        _ = machine.readCompleted()
        _ = machine.received(ByteBuffer(string: "pipelined"))
        let before = machine.inputEnded()
        #expect(before == ByteBuffer(string: "pipelined"))
        #expect(!machine.keepReadingBelow())
        let next = machine.readRequested()
        #expect(next == .readBelow)
    }

    @Test func pastTheLimitItStopsReadingAndTCPHoldsTheClientBack() {
        var machine = ReadAheadStateMachine(limit: 10)
        _ = machine.received(ByteBuffer(string: "request"))
        _ = machine.readCompleted()
        let result13 = machine.received(ByteBuffer(string: "12345"))
        #expect(result13 == .hold)
        #expect(machine.keepReadingBelow())
        let result14 = machine.received(ByteBuffer(string: "67890"))
        #expect(result14 == .hold)
        #expect(!machine.keepReadingBelow())
        #expect(machine.heldByteCount == 10)
    }

    @Test func anEndOfInputWithNothingHeldHasNothingToPassFirst() {
        var machine = ReadAheadStateMachine(limit: 10)
        let before = machine.inputEnded()
        #expect(before == nil)
    }

    @Test func aClosedConnectionDropsWhatIsHeldAndStopsReading() {
        var machine = ReadAheadStateMachine(limit: 100)
        _ = machine.received(ByteBuffer(string: "request"))
        _ = machine.readCompleted()
        _ = machine.received(ByteBuffer(string: "held"))
        machine.closed()
        #expect(machine.heldByteCount == 0)
        #expect(!machine.keepReadingBelow())
        let result16 = machine.readRequested()
        #expect(result16 == .readBelow)
    }

    // MARK: in a pipeline

    /// Counts the reads that reach the head of the pipeline (the socket).
    typealias SocketReads = GlueHandlerTests.ReadCounter

    /// Reads like the intercepted client handler: once it has a request it stops passing reads on until told.
    final class PausingReader: ChannelDuplexHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundIn = ByteBuffer
        var events: [String] = []
        var paused = false
        var pendingRead = false
        var context: ChannelHandlerContext?

        func handlerAdded(context: ChannelHandlerContext) { self.context = context }
        var closeOnNextRead = false
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            events.append("read:" + String(buffer: unwrapInboundIn(data)))
            paused = true
            if closeOnNextRead { context.close(promise: nil) }
        }
        func channelInactive(context: ChannelHandlerContext) { events.append("inactive") }
        func channelReadComplete(context: ChannelHandlerContext) { events.append("complete") }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case ChannelEvent.inputClosed = event { events.append("inputClosed") }
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { events.append("error") }
        func read(context: ChannelHandlerContext) {
            if paused { pendingRead = true } else { context.read() }
        }
        /// The response went out: the next request may come.
        func resume() {
            paused = false
            if pendingRead {
                pendingRead = false
                context?.read()
            }
        }
    }

    @Test func inAPipelineTheSocketIsReadThroughoutAndThePausedReaderGetsEverythingInOrder() throws {
        let channel = EmbeddedChannel()
        let socket = SocketReads()
        let reader = PausingReader()
        try channel.pipeline.syncOperations.addHandlers([socket, ReadAheadHandler(limit: 100), reader])

        try channel.writeInbound(ByteBuffer(string: "request-1"))  // fires read and read-complete
        #expect(reader.events == ["read:request-1", "complete"])
        #expect(reader.pendingRead)
        let readsAfterFirst = socket.reads
        #expect(readsAfterFirst >= 1)  // the read-ahead asked the socket on its own account

        // The next request arrives while the first awaits its response: held, and the socket still read.
        channel.pipeline.fireChannelRead(ByteBuffer(string: "request-2a"))
        channel.pipeline.fireChannelRead(ByteBuffer(string: "request-2b"))
        channel.pipeline.fireChannelReadComplete()
        #expect(reader.events == ["read:request-1", "complete"])
        #expect(socket.reads > readsAfterFirst)

        reader.resume()
        #expect(reader.events == ["read:request-1", "complete", "read:request-2arequest-2b", "complete"])
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    /// An end of input reaches a paused reader at once, as NIO delivers it, with what was held just before it.
    @Test(arguments: [true, false])
    func inAPipelineAnEndOfInputGoesUpAtOnceAfterWhatWasHeld(halfClose: Bool) throws {
        let channel = EmbeddedChannel()
        let reader = PausingReader()
        try channel.pipeline.syncOperations.addHandlers([ReadAheadHandler(limit: 100), reader])
        try channel.writeInbound(ByteBuffer(string: "request-1"))
        channel.pipeline.fireChannelRead(ByteBuffer(string: "request-2"))
        channel.pipeline.fireChannelReadComplete()
        if halfClose {
            channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        } else {
            channel.pipeline.fireErrorCaught(IOError(errnoCode: ECONNRESET, reason: "read"))
        }
        #expect(reader.events == [
            "read:request-1", "complete", "read:request-2", "complete", halfClose ? "inputClosed" : "error",
        ])
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }

    @Test func inAPipelineTheSocketIsNoLongerReadPastTheLimitUntilTheReaderAsks() throws {
        let channel = EmbeddedChannel()
        let socket = SocketReads()
        let reader = PausingReader()
        try channel.pipeline.syncOperations.addHandlers([socket, ReadAheadHandler(limit: 8), reader])
        try channel.writeInbound(ByteBuffer(string: "request-1"))
        channel.pipeline.fireChannelRead(ByteBuffer(string: "12345678"))
        let readsBefore = socket.reads
        channel.pipeline.fireChannelReadComplete()
        #expect(socket.reads == readsBefore)  // 8 bytes held: no read on its own account
        reader.resume()
        #expect(reader.events.last == "complete")
        #expect(socket.reads > readsBefore)  // delivered: reading resumes
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    /// A reader that closes the channel on what it is given (a bad TLS record) gets nothing after the close.
    @Test func inAPipelineNothingGoesUpAfterTheReaderClosedTheChannel() throws {
        let channel = EmbeddedChannel()
        let reader = PausingReader()
        try channel.pipeline.syncOperations.addHandlers([ReadAheadHandler(limit: 100), reader])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
        try channel.writeInbound(ByteBuffer(string: "request-1"))
        channel.pipeline.fireChannelRead(ByteBuffer(string: "bad"))
        channel.pipeline.fireChannelReadComplete()
        reader.closeOnNextRead = true
        reader.resume()
        #expect(reader.events == ["read:request-1", "complete", "read:bad", "inactive"])
    }

    @Test func inAPipelineAnUnpausedReaderSeesReadsAsTheyCome() throws {
        let channel = EmbeddedChannel()
        let reader = PausingReader()
        try channel.pipeline.syncOperations.addHandlers([ReadAheadHandler(limit: 100), reader])
        try channel.writeInbound(ByteBuffer(string: "a"))
        reader.resume()
        try channel.writeInbound(ByteBuffer(string: "b"))
        #expect(reader.events == ["read:a", "complete", "read:b", "complete"])
        _ = try channel.finish(acceptAlreadyClosed: true)
    }
}

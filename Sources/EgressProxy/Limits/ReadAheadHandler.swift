import NIOCore

/// Keeps a connection's socket in the event loop's read set while the handlers above pause reading (between a
/// keep-alive request and its response), and holds what arrives meanwhile until they ask again. They then get it
/// as one read, in the order it came.
///
/// Why: a handler that stops asking for reads makes NIO drop the socket from epoll after each request and add it
/// back for the next one: two `epoll_ctl` calls per keep-alive request.
///
/// Above this handler nothing else changes. Bytes reach the handlers above when they ask, as they would have
/// come from the socket, so request-head limits and their timers see the same stream at the same moments. An
/// end of input or a read error goes up at once, after what was held, as NIO itself delivers them to a paused
/// pipeline. What is held sits in one buffer; past `limit` bytes this handler stops reading, so a client that
/// keeps sending is held back by TCP as before. At most one socket read more than `limit` is held
/// (NIO reads up to four times 64 KiB per wake-up).
///
/// For channels with `autoRead` on: after each read it passes up, this handler asks the pipeline for the next
/// read, as NIO would have.
final class ReadAheadHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private var machine: ReadAheadStateMachine

    /// Whether NIO asks for the next read after each one; only then does this handler ask in its place.
    private var autoRead = true

    init(limit: Int = 65536) {
        machine = ReadAheadStateMachine(limit: limit)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        autoRead = (try? context.channel.syncOptions?.getOption(ChannelOptions.autoRead)) ?? true
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch machine.received(unwrapInboundIn(data)) {
        case .passOn(let bytes): context.fireChannelRead(wrapInboundOut(bytes))
        case .hold: break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if machine.readCompleted() {
            context.fireChannelReadComplete()
            // What NIO does after a read when autoRead is on, done here so that it happens before the check below.
            if autoRead { context.pipeline.syncOperations.read() }
        }
        if machine.keepReadingBelow() { context.read() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { passOnHeldBeforeEnd(context: context) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        passOnHeldBeforeEnd(context: context)
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        machine.closed()
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        switch machine.readRequested() {
        case .readBelow:
            context.read()
        case .none:
            break
        case .deliver(let held):
            context.fireChannelRead(wrapInboundOut(held))
            // The read may have closed the channel (a bad TLS record): nothing more goes up then, as from NIO.
            if !machine.isClosed { context.fireChannelReadComplete() }
            machine.delivered()
            if autoRead { context.pipeline.syncOperations.read() }
            if machine.keepReadingBelow() { context.read() }
        }
    }

    /// The input ended or failed: what was held goes up first, as NIO delivers the last bytes before the end.
    private func passOnHeldBeforeEnd(context: ChannelHandlerContext) {
        guard let held = machine.inputEnded() else { return }
        context.fireChannelRead(wrapInboundOut(held))
        if !machine.isClosed { context.fireChannelReadComplete() }
    }
}

@available(*, unavailable)
extension ReadAheadHandler: Sendable {}

/// The decisions of `ReadAheadHandler`, without a channel.
struct ReadAheadStateMachine {
    enum ReceivedAction: Equatable {
        case passOn(ByteBuffer)
        case hold
    }

    enum ReadAction: Equatable {
        /// Nothing is held: the read goes on to the socket.
        case readBelow
        /// Pass these bytes up as one read, then call `delivered()`.
        case deliver(ByteBuffer)
        /// A read asked for while held bytes are being passed up: the read that follows them covers it.
        case none
    }

    let limit: Int
    /// The handlers above asked for a read and have not had one since.
    private(set) var upperWantsRead = true
    /// What came while they did not; one buffer, however many reads it took.
    private var held: ByteBuffer?
    /// Bytes went up in the read now in progress.
    private var passedOnInThisRead = false
    private var delivering = false
    private var inputOver = false

    init(limit: Int) {
        self.limit = limit
    }

    var heldByteCount: Int { held?.readableBytes ?? 0 }

    mutating func received(_ bytes: ByteBuffer) -> ReceivedAction {
        if upperWantsRead && held == nil && !delivering {
            passedOnInThisRead = true
            return .passOn(bytes)
        }
        if held == nil {
            held = bytes
        } else {
            held!.writeImmutableBuffer(bytes)
        }
        return .hold
    }

    /// The socket read ended. True: something went up, so read-complete goes up, followed by the read that
    /// autoRead would ask for (the handlers above decide whether it reaches this handler).
    mutating func readCompleted() -> Bool {
        guard passedOnInThisRead else { return false }
        passedOnInThisRead = false
        upperWantsRead = false
        return true
    }

    /// Whether to ask the socket for more on this handler's own account: when the handlers above did not, and
    /// less than `limit` is held.
    func keepReadingBelow() -> Bool {
        !inputOver && !upperWantsRead && heldByteCount < limit
    }

    mutating func readRequested() -> ReadAction {
        if delivering { return .none }
        guard let taken = held else {
            upperWantsRead = true
            return .readBelow
        }
        held = nil
        upperWantsRead = false
        delivering = true
        return .deliver(taken)
    }

    mutating func delivered() {
        delivering = false
    }

    /// The input ended (a half-close or an error): what was held, to go up before the event.
    mutating func inputEnded() -> ByteBuffer? {
        inputOver = true
        defer { held = nil }
        return held
    }

    mutating func closed() {
        inputOver = true
        isClosed = true
        held = nil
    }

    /// The channel went inactive (perhaps while held bytes were going up).
    private(set) var isClosed = false
}

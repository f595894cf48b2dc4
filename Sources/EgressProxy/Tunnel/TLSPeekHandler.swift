import NIOCore

/// Sits in front of the client side of a tunnel: passes every read on unchanged and at once, and parses a
/// copy for the ClientHello. Removes itself once it has an answer, so the relay runs without it.
final class TLSPeekHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var peek: ClientHelloPeek
    private let timeout: TimeAmount
    private let onResult: (PeekResult) -> Void
    private var timer: Scheduled<Void>?
    private var reported = false

    init(limit: Int, timeout: TimeAmount, onResult: @escaping (PeekResult) -> Void) {
        self.peek = ClientHelloPeek(limit: limit)
        self.timeout = timeout
        self.onResult = onResult
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = loopBound.value
            handler.conclude(handler.peek.giveUp(because: "none within \(UpstreamConnector.describe(handler.timeout))"), context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        context.fireChannelRead(data)  // forward first: the peek never holds a byte
        if case .done(let result) = peek.feed(bytes) {
            conclude(result, context: context)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            conclude(peek.giveUp(because: "client closed its side first"), context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        conclude(peek.giveUp(because: "connection closed"), context: context)
        context.fireChannelInactive()
    }

    private func conclude(_ result: PeekResult, context: ChannelHandlerContext) {
        guard !reported else { return }
        reported = true
        timer?.cancel()
        timer = nil
        onResult(result)
        if context.channel.isActive {
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }
}

@available(*, unavailable)
extension TLSPeekHandler: Sendable {}

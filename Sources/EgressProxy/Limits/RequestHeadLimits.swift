import NIOCore
import NIOHTTP1

/// Limits on a request head, each with the status a client gets when it breaks it.
package struct RequestHeadLimits: Sendable, Hashable {
    /// Bytes in the request line (414 URI Too Long past it).
    package var requestLine = 8 * 1024
    /// Bytes in the header block after the request line (431 past it).
    package var headerBytes = 64 * 1024
    /// Header fields (431 past it).
    package var headerFields = 200
    /// Time to receive a whole request head, from the connection's start or a later head's first byte (408).
    package var headerTimeout: TimeAmount = .seconds(10)

    package init() {}

    /// The HTTP decoder's own limits, a backstop for bytes the scanner did not see (pipelined requests).
    package var decoderConfiguration: NIOHTTPDecoderLimitConfiguration {
        var configuration = NIOHTTPDecoderLimitConfiguration()
        configuration.maxHeaderFieldSize = max(requestLine, headerBytes)
        configuration.maxHeaderListSize = requestLine + headerBytes
        configuration.maxHeaderFieldCount = headerFields
        return configuration
    }
}

/// A broken request-head limit.
package enum RequestLimitError: Error, Hashable {
    case requestLineTooLong(limit: Int)
    case tooManyHeaderFields(limit: Int)
    case headerBlockTooLarge(limit: Int)
    case headerTimeout(TimeAmount)

    var proxyError: ProxyError {
        switch self {
        case .requestLineTooLong(let limit):
            ProxyError(status: .uriTooLong, reason: "request line longer than \(limit) bytes", proxyStatusError: "http_request_error")
        case .tooManyHeaderFields(let limit):
            ProxyError(
                status: .requestHeaderFieldsTooLarge, reason: "more than \(limit) header fields",
                proxyStatusError: "http_request_error")
        case .headerBlockTooLarge(let limit):
            ProxyError(
                status: .requestHeaderFieldsTooLarge, reason: "header block larger than \(limit) bytes",
                proxyStatusError: "http_request_error")
        case .headerTimeout(let timeout):
            ProxyError(
                status: .requestTimeout, reason: "request head not received within \(UpstreamConnector.describe(timeout))",
                proxyStatusError: "http_request_error")
        }
    }
}

/// Counts a request head's lines and bytes as they arrive, before the HTTP decoder buffers them. Pure.
package struct RequestHeadScanner {
    package enum Outcome: Equatable {
        case needMore
        /// The head ended; `consumed` bytes of the last input belonged to it.
        case complete(consumed: Int)
        case violation(RequestLimitError)
    }

    let limits: RequestHeadLimits
    private var lineBytes = 0
    private var lines = 0
    private var requestLineBytes = 0
    private var headerBytes = 0

    package init(limits: RequestHeadLimits) {
        self.limits = limits
    }

    package mutating func scan(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        var consumed = 0
        for byte in bytes {
            consumed += 1
            // Every byte counts toward the limits, CRs included.
            if lines > 0 {
                headerBytes += 1
                if headerBytes > limits.headerBytes { return .violation(.headerBlockTooLarge(limit: limits.headerBytes)) }
            } else if byte != UInt8(ascii: "\n") {
                requestLineBytes += 1
                if requestLineBytes > limits.requestLine { return .violation(.requestLineTooLong(limit: limits.requestLine)) }
            }
            if byte == UInt8(ascii: "\n") {
                let empty = lineBytes == 0
                lineBytes = 0
                if empty {
                    // Empty lines before the request line are ignored (RFC 9112 §2.2); after it, one ends the head.
                    if lines > 0 { return .complete(consumed: consumed) }
                    continue
                }
                lines += 1
                if lines - 1 > limits.headerFields { return .violation(.tooManyHeaderFields(limit: limits.headerFields)) }
                continue
            }
            if byte == UInt8(ascii: "\r") { continue }
            lineBytes += 1
        }
        return .needMore
    }
}

/// Sits before the HTTP request decoder: enforces `RequestHeadLimits` on each request head as its bytes arrive,
/// and the deadline for receiving it. A broken limit goes up the pipeline as an error (the front handler answers
/// with its status and closes); bytes after it are dropped. Between heads it passes bytes through untouched; the
/// front handler says when the next head is due.
package final class RequestHeadLimitHandler: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer

    private let limits: RequestHeadLimits
    private var scanner: RequestHeadScanner?
    /// When the head being received started; nil between heads.
    private var headStarted: NIODeadline?
    /// One timer per connection, not one per request: it checks the head in progress when it fires and is
    /// set again only while a head is in progress.
    private var timer: Scheduled<Void>?
    private var failed = false
    /// Bytes were forwarded past a head unscanned: the scanner no longer knows where heads start.
    private var pipelined = false
    private weak var context: ChannelHandlerContext?
    private let firstHeadDueAtOnce: Bool

    /// - Parameter firstHeadDueAtOnce: the first head's deadline starts when the handler is added (a connection
    ///   just accepted), not with its first byte (inside inspection, after a TLS handshake of its own).
    package init(limits: RequestHeadLimits, firstHeadDueAtOnce: Bool = true) {
        self.limits = limits
        self.scanner = RequestHeadScanner(limits: limits)
        self.firstHeadDueAtOnce = firstHeadDueAtOnce
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // The first head is due from the start: a client that connects and says nothing is not let to linger.
        if firstHeadDueAtOnce { headBegan(context: context) }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        self.context = nil
    }

    /// The exchange is over: the next bytes start a new head (its deadline starts with its first byte).
    package func expectNextHead() {
        guard !failed, !pipelined else { return }
        scanner = RequestHeadScanner(limits: limits)
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        let buffer = unwrapInboundIn(data)
        guard var current = scanner else {
            context.fireChannelRead(data)
            return
        }
        if headStarted == nil, buffer.readableBytes > 0 { headBegan(context: context) }
        switch buffer.withUnsafeReadableBytes({ current.scan($0) }) {
        case .needMore:
            scanner = current
            context.fireChannelRead(data)
        case .complete(let consumed):
            scanner = nil
            headStarted = nil
            // Bytes after the head in the same read (a body, or a pipelined request) pass unscanned: where the
            // next head starts is the decoder's to know. From here the decoder's own limits apply.
            if consumed < buffer.readableBytes { pipelined = true }
            context.fireChannelRead(data)
        case .violation(let error):
            fail(error, context: context)
        }
    }

    private func headBegan(context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        headStarted = now
        if timer == nil { armTimer(at: now + limits.headerTimeout, context: context) }
    }

    private func armTimer(at deadline: NIODeadline, context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) { loopBound.value.timerFired() }
    }

    private func timerFired() {
        timer = nil
        guard let started = headStarted, scanner != nil, !failed, let context else { return }
        let due = started + limits.headerTimeout
        if NIODeadline.now() >= due {
            fail(.headerTimeout(limits.headerTimeout), context: context)
        } else {
            armTimer(at: due, context: context)
        }
    }

    private func fail(_ error: RequestLimitError, context: ChannelHandlerContext) {
        failed = true
        scanner = nil
        headStarted = nil
        timer?.cancel()
        timer = nil
        context.fireErrorCaught(error)
    }
}

@available(*, unavailable)
extension RequestHeadLimitHandler: Sendable {}

import NIOCore

/// One side's HTTP/1.1 messages off a byte stream, one after another: a head, its body's bytes, its end. Requests
/// are framed by their own fields; responses by theirs and by the request they answer (`answeringHEAD`). After a
/// `101` response, or a request that ends HTTP on the connection (CONNECT; an `Upgrade` request is the caller's to
/// hold until its answer), it stops: the bytes after are another protocol's, left in the buffer.
public struct HTTP1MessageDecoder: Sendable {
    public enum Part: Sendable {
        case head(HTTP1Head)
        case body(ByteBuffer)
        case end(trailers: HTTP1Head?)
    }

    public enum Event: Sendable {
        case part(Part)
        case needMore
        case invalid(HTTP1ParseError)
    }

    private var heads: HTTP1HeadParser
    private var body: HTTP1BodyDecoder?
    private var stopped = false
    /// The message in progress stops HTTP when it ends.
    private var stopsAfterThis = false
    private var failed = false
    /// The response to come answers a HEAD request: it has no body whatever its fields say.
    public var answeringHEAD = false
    /// The response to come answers a CONNECT: a 2xx one has no body (the connection is a tunnel after it).
    public var answeringCONNECT = false

    public init(kind: HTTP1Head.Kind, limits: HTTP1HeadParser.Limits = .init()) {
        precondition(kind != .trailers)
        self.heads = HTTP1HeadParser(kind: kind, limits: limits)
    }

    /// Between messages: no head or body in progress (bytes of a head not yet looked at may wait in the buffer).
    public var isBetweenMessages: Bool { body == nil && !heads.isInsideHead }

    /// Part of a head has been received and the rest has not (bytes other than empty lines before it).
    public var isInsideHead: Bool { body == nil && heads.isInsideHead }

    /// A `101` (or CONNECT) ended HTTP: nothing more is decoded.
    public var hasStopped: Bool { stopped }

    public mutating func next(_ buffer: inout ByteBuffer) -> Event {
        guard !stopped, !failed else { return .needMore }
        if var decoder = body {
            let event = decoder.next(&buffer)
            body = decoder
            switch event {
            case .body(let bytes): return .part(.body(bytes))
            case .end(let trailers):
                body = nil
                if stopsAfterThis { stopped = true }
                return .part(.end(trailers: trailers))
            case .needMore: return .needMore
            case .invalid(let error):
                failed = true
                return .invalid(error)
            }
        }
        switch heads.parse(&buffer) {
        case .needMore:
            return .needMore
        case .invalid(let error):
            failed = true
            return .invalid(error)
        case .head(var head):
            let framing: Result<HTTP1BodyFraming, HTTP1ParseError>
            switch head.kind {
            case .request:
                stopsAfterThis = head.methodIs("CONNECT")
                framing = HTTP1BodyFraming.request(head)
            case .response:
                stopsAfterThis = head.status == 101 || (answeringCONNECT && (200..<300).contains(head.status))
                // After a 101 or a CONNECT's 2xx nothing is a body, but fields that would frame one wrongly are
                // refused all the same (as llhttp does).
                framing = HTTP1BodyFraming.response(head, requestMethodIsHEAD: answeringHEAD).map { stopsAfterThis ? .none : $0 }
            case .trailers:
                preconditionFailure("a trailer section is never a message's head")
            }
            switch framing {
            case .failure(let error):
                failed = true
                return .invalid(error)
            case .success(let framing):
                body = HTTP1BodyDecoder(framing: framing)
                head.bodyFraming = framing
                return .part(.head(head))
            }
        }
    }

    /// The stream ended (EOF, close_notify): the end of a body that runs until the close, an error for a message
    /// cut short, nothing between messages. `buffer` is what was not decoded yet.
    public mutating func inputEnded(_ buffer: ByteBuffer) -> Event {
        guard !failed else { return .needMore }
        if var decoder = body {
            let event = decoder.inputEnded()
            body = decoder
            switch event {
            case .end(let trailers):
                body = nil
                return .part(.end(trailers: trailers))
            case .invalid(let error):
                failed = true
                return .invalid(error)
            default:
                return .needMore
            }
        }
        // Bytes of a head that never ended (empty lines before one are nothing).
        guard !stopped, buffer.readableBytesView.contains(where: { $0 != cr && $0 != lf }) else { return .needMore }
        failed = true
        return .invalid(.incompleteMessage)
    }
}

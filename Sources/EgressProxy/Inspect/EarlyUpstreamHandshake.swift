import NIOCore
import NIOConcurrencyHelpers
import NIOTLS
import OpenSSLTLS

/// A CONNECT that will most likely be inspected starts its upstream TLS handshake as soon as the upstream's TCP
/// connection is up, before the client's ClientHello is in: the origin's part of the handshake then overlaps the
/// client's, instead of following it. It is made for what the ClientHello will most likely ask (`Inspection.
/// earlyHandshakePlan`): the CONNECT host as server name, and the ALPN offer this agent's clients made last.
///
/// The connection serves only a ClientHello that makes the same plan (`matches`); any other outcome (another name,
/// another offer, a passthrough, a refusal, a client that leaves) closes it, and a connection is dialled anew if
/// one is needed. Nothing but the handshake is ever sent on it before it serves.
struct EarlyUpstreamHandshake {
    let upstreamName: String
    let offer: [String]
    let recorder: EarlyHandshakeRecorder

    /// Whether this handshake serves a ClientHello that asks for `upstreamName` and `offer`: the same name and
    /// offer, on a connection that neither failed nor closed meanwhile. A failed one (a verification error, say)
    /// is closed, its pipeline gone: the connection dialled instead fails as it would have, and is reported so.
    func matches(upstreamName: String, offer: [String], channel: any Channel) -> Bool {
        upstreamName.lowercased() == self.upstreamName.lowercased() && offer == self.offer && channel.isActive
            && !recorder.failed && !recorder.closed
    }
}

/// Above the upstream's TLS handler while an early handshake waits for the client's ClientHello: keeps what the
/// handshake brings (its completion, errors, the close, bytes the upstream sends right after it, such as HTTP/2's
/// SETTINGS) in order, and stops reading once the handshake is done. `release` hands all of it, in order, to the
/// handlers added after this one, and leaves.
final class EarlyHandshakeRecorder: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private enum Event {
        case read(NIOAny)
        case readComplete
        case user(Any)
        case error(any Error)
        case inactive
    }

    private var events: [Event] = []
    private var context: ChannelHandlerContext?
    private var releasing = false
    /// The protocol the upstream chose (`.some(nil)`: none), once the handshake is done.
    private(set) var negotiated: String?? = nil
    /// The handshake or the connection failed, before `release`.
    private(set) var failed = false
    /// The connection closed, or its upstream ended its side (a FIN, with or without close_notify), before `release`.
    private(set) var closed = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        record(.read(data), context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        record(.readComplete, context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !releasing {
            if case TLSUserEvent.handshakeCompleted(let chosen) = event {
                negotiated = .some(chosen)
                // Nothing more is read until the connection serves: what the upstream sends waits in its socket.
                context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
            } else if case ChannelEvent.inputClosed = event {
                // Half-closed by the upstream (the channel stays open for writing): never to serve.
                closed = true
            } else if event is TLSClosedWithoutNotify || event is TLSCloseWithoutNotify {
                closed = true
            }
        }
        record(.user(event), context: context)
    }

    /// Its setup failed: never to serve.
    func setUpFailed() { failed = true }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !releasing { failed = true }
        record(.error(error), context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !releasing { closed = true }
        record(.inactive, context: context)
    }

    private func record(_ event: Event, context: ChannelHandlerContext) {
        events.append(event)
        if releasing { drain(context: context) }
    }

    /// Hands what was kept, in order, to the handlers after this one (and what comes meanwhile, after it), then
    /// leaves the pipeline.
    func release() {
        guard let context, !releasing else { return }
        releasing = true
        drain(context: context)
        if self.context != nil {
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    private var draining = false

    private func drain(context: ChannelHandlerContext) {
        // An event fired here may bring another (a close after an error): it is appended, and handed on in turn.
        guard !draining else { return }
        draining = true
        defer { draining = false }
        var next = 0
        while next < events.count {
            let event = events[next]
            next += 1
            switch event {
            case .read(let data): context.fireChannelRead(data)
            case .readComplete: context.fireChannelReadComplete()
            case .user(let event): context.fireUserInboundEventTriggered(event)
            case .error(let error): context.fireErrorCaught(error)
            case .inactive: context.fireChannelInactive()
            }
        }
        events.removeAll()
    }
}

@available(*, unavailable)
extension EarlyHandshakeRecorder: Sendable {}

/// What inspected ClientHellos were like, for guessing the next one before it is in (`Inspection.
/// earlyHandshakePlan`): the ALPN offer each agent's clients made last, and how often in a row; the ports TLS was
/// inspected on (443 from the start); the destinations (agent, host, port) whose last CONNECT was not followed by a
/// ClientHello naming its host (another name, none, or no TLS). Kept per inspection: a reload starts afresh.
final class ClientHelloHabits: Sendable {
    private struct State {
        var offers: [String: (offer: [String], streak: Int)] = [:]
        var tlsPorts: Set<Int> = [443]
        var otherName: Set<String> = []
    }

    private let state = NIOLockedValueBox(State())
    static let agentLimit = 1024
    static let portLimit = 64
    static let destinationLimit = 4096
    /// How many ClientHellos in a row must have made the same offer before it is guessed.
    static let streakNeeded = 2

    /// An agent's client made `offer` (what the upstream is offered) on a connection to `port`, inspected.
    func note(agent: String, offer: [String], port: Int) {
        state.withLockedValue { state in
            if state.offers.count >= Self.agentLimit && state.offers[agent] == nil { state.offers.removeAll() }
            let last = state.offers[agent]
            state.offers[agent] = (offer, last?.offer == offer ? min(last!.streak + 1, Self.streakNeeded) : 1)
            if state.tlsPorts.count < Self.portLimit { state.tlsPorts.insert(port) }
        }
    }

    /// The offer `agent`'s clients made the last `streakNeeded` times, if they made the same each time.
    func settledOffer(agent: String) -> [String]? {
        state.withLockedValue { state in
            guard let last = state.offers[agent], last.streak >= Self.streakNeeded else { return nil }
            return last.offer
        }
    }

    func seenTLS(onPort port: Int) -> Bool {
        state.withLockedValue { $0.tlsPorts.contains(port) }
    }

    /// A CONNECT of `agent`'s to `destination` was followed by a ClientHello naming its host (`namedIt`), or not
    /// (another name, none, or bytes that are no ClientHello).
    func note(agent: String, destination: Destination, namedIt: Bool) {
        let key = Self.key(agent, destination)
        state.withLockedValue { state in
            if namedIt {
                state.otherName.remove(key)
            } else {
                if state.otherName.count >= Self.destinationLimit { state.otherName.removeAll() }
                state.otherName.insert(key)
            }
        }
    }

    /// Whether the last CONNECT of `agent`'s to `destination` was followed by something else than a ClientHello
    /// naming its host.
    func namesAnotherHost(agent: String, destination: Destination) -> Bool {
        let key = Self.key(agent, destination)
        return state.withLockedValue { $0.otherName.contains(key) }
    }

    private static func key(_ agent: String, _ destination: Destination) -> String {
        "\(agent) \(destination.host.lowercased()) \(destination.port)"
    }
}

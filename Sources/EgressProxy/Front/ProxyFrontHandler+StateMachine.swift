import NIOCore
import NIOHTTP1

extension ProxyFrontHandler {
    /// The life of a client connection, from its first request line to a tunnel or a series of forwarded
    /// plain-HTTP exchanges. Pure: each event returns the actions the handler performs, so every path is
    /// tested without a socket.
    struct StateMachine {
        enum State: Equatable {
            /// Waiting for a request head.
            case idle
            /// A CONNECT request is being dialled.
            case dialingTunnel(Destination)
            /// The client connection is a tunnel now; this machine is done.
            case tunnel
            /// A plain-HTTP exchange whose upstream is not ready yet; request parts wait in `pending`.
            case awaitingUpstream(Exchange, pending: [HTTPClientRequestPart])
            /// A plain-HTTP exchange in flight.
            case forwarding(Exchange)
            /// The connection is finished (an error was answered, or the client or upstream went away).
            case closed
        }

        struct Exchange: Equatable {
            var destination: Destination
            var method: String
            var clientVersion: HTTPVersion
            var clientKeepAlive: Bool
            var requestDone = false
            var responseStarted = false
            var responseDone = false
            var upstreamKeepAlive = true
            var status: Int?
            /// The head as forwarded, kept while the request may be sent again on a new connection: it is
            /// idempotent (RFC 9110 §9.2.2) and has no body, so nothing of it is lost once sent.
            var replayableHead: HTTPRequestHead?
            /// The upstream connection was kept from an earlier exchange (it may have been closed by the upstream as
            /// this request arrived, RFC 9112 §9.3.1).
            var upstreamReused = false
            /// Sent again already: a second close before an answer is the upstream's answer.
            var retried = false
        }

        enum Action: Equatable {
            /// Dial `destination` for a tunnel.
            case dialTunnel(Destination)
            /// Answer 200 and turn the connection into a relay.
            case establishTunnel
            /// Find or dial a plain-HTTP upstream for `destination`.
            case connectUpstream(Destination)
            /// The kept upstream connection closed before answering: dial a new one for the same request.
            case retryUpstream(Destination)
            case writeUpstream([HTTPClientRequestPart])
            case writeClient(HTTPServerResponsePart)
            /// Answer with an error the proxy generated, then close the client connection.
            case respondError(ProxyError)
            /// The exchange is complete: keep or close each side.
            case completeExchange(keepClient: Bool, keepUpstream: Bool)
            /// Close the client's connection (it broke the protocol).
            case closeClient(reason: String)
            /// The response was cut off after its head: reset the client's connection, so that it cannot take a
            /// body ended by the close, or the part of one it got, for the whole response.
            case abortClient(reason: String)
        }

        private(set) var state: State = .idle

        /// Whether the client's connection closes once the response being written has ended (the client asked
        /// to, or the body is delimited by the close).
        var clientClosesAfterResponse: Bool {
            switch state {
            case .forwarding(let exchange): return !exchange.clientKeepAlive
            case .closed: return true
            case .idle, .dialingTunnel, .tunnel, .awaitingUpstream: return false
            }
        }

        /// A response has begun and not ended: closing the client's connection now cuts it.
        var responseInProgress: Bool {
            if case .forwarding(let exchange) = state { return exchange.responseStarted && !exchange.responseDone }
            return false
        }

        /// The response has ended and the request has not: the client may stop sending it (RFC 9112 §9.3), as after an
        /// early `413`.
        var responseEndedBeforeRequest: Bool {
            if case .forwarding(let exchange) = state { return exchange.responseDone && !exchange.requestDone }
            return false
        }

        /// A request is on its way upstream (its head sent, or waiting for the upstream connection).
        var forwardingOrAwaiting: Bool {
            switch state {
            case .forwarding, .awaitingUpstream: return true
            case .idle, .dialingTunnel, .tunnel, .closed: return false
            }
        }

        mutating func requestHead(_ head: HTTPRequestHead) -> [Action] {
            guard case .idle = state else {
                state = .closed
                return [.closeClient(reason: "request head out of order")]
            }
            if head.method == .CONNECT {
                switch RequestTarget.parseAuthority(head.uri) {
                case .success(let destination):
                    state = .dialingTunnel(destination)
                    return [.dialTunnel(destination)]
                case .failure(let invalid):
                    state = .closed
                    return [.respondError(.badRequest(invalid.description))]
                }
            }
            if let problem = InterceptedExchangeStateMachine.framingProblem(with: head) {
                // Two readers could find a different body, or a request inside it (as on the inspected path).
                state = .closed
                return [.respondError(.badRequest("refused: \(problem)"))]
            }
            // RFC 9112 §3.2: one Host, and an HTTP/1.1 request without one is refused (the URL's authority replaces
            // it upstream, but two readers of a request with two could still disagree on where it went).
            var hosts = 0
            for (name, _) in head.headers where name.equalsIgnoringASCIICase("host") { hosts += 1 }
            if hosts > 1 || (hosts == 0 && (head.version.major, head.version.minor) >= (1, 1)) {
                state = .closed
                return [.respondError(.badRequest(hosts > 1 ? "two Host headers" : "an HTTP/1.1 request needs a Host header"))]
            }
            switch RequestTarget.parseAbsoluteURI(head.uri) {
            case .success(let (destination, originForm)):
                let outbound = ForwardingHeaders.request(head, destination: destination, originForm: originForm)
                var exchange = Exchange(
                    destination: destination,
                    method: head.method.rawValue,
                    clientVersion: head.version,
                    clientKeepAlive: head.isKeepAlive && !head.headers.contains(name: "upgrade")
                )
                if Self.isReplayable(head) { exchange.replayableHead = outbound }
                state = .awaitingUpstream(exchange, pending: [.head(outbound)])
                return [.connectUpstream(destination)]
            case .failure(let invalid):
                state = .closed
                return [.respondError(.badRequest(invalid.description))]
            }
        }

        mutating func requestBody(_ bytes: ByteBuffer) -> [Action] {
            switch state {
            case .awaitingUpstream(let exchange, var pending):
                pending.append(.body(.byteBuffer(bytes)))
                state = .awaitingUpstream(exchange, pending: pending)
                return []
            case .forwarding:
                return [.writeUpstream([.body(.byteBuffer(bytes))])]
            case .idle, .dialingTunnel, .tunnel, .closed:
                return []
            }
        }

        mutating func requestEnd(_ trailers: HTTPHeaders?) -> [Action] {
            switch state {
            case .awaitingUpstream(var exchange, var pending):
                exchange.requestDone = true
                pending.append(.end(trailers))
                state = .awaitingUpstream(exchange, pending: pending)
                return []
            case .forwarding(var exchange):
                exchange.requestDone = true
                state = .forwarding(exchange)
                return [.writeUpstream([.end(trailers)])] + completeIfDone(exchange)
            case .idle, .dialingTunnel, .tunnel, .closed:
                return []
            }
        }

        /// The client half-closed or asked the proxy to stop: finish the current exchange, then close.
        mutating func clientWantsClose() {
            switch state {
            case .awaitingUpstream(var exchange, let pending):
                exchange.clientKeepAlive = false
                state = .awaitingUpstream(exchange, pending: pending)
            case .forwarding(var exchange):
                exchange.clientKeepAlive = false
                state = .forwarding(exchange)
            default:
                break
            }
        }

        mutating func tunnelConnected() -> [Action] {
            guard case .dialingTunnel = state else { return [] }
            state = .tunnel
            return [.establishTunnel]
        }

        /// - Parameter reused: the connection was kept from an earlier exchange.
        mutating func upstreamReady(reused: Bool = false) -> [Action] {
            guard case .awaitingUpstream(var exchange, let pending) = state else { return [] }
            exchange.upstreamReused = reused
            state = .forwarding(exchange)
            return [.writeUpstream(pending)] + completeIfDone(exchange)
        }

        mutating func connectFailed(_ error: ProxyError) -> [Action] {
            switch state {
            case .dialingTunnel, .awaitingUpstream:
                state = .closed
                return [.respondError(error)]
            default:
                return []
            }
        }

        mutating func responseHead(_ head: HTTPResponseHead) -> [Action] {
            guard case .forwarding(var exchange) = state, !exchange.responseDone else { return [] }
            if let problem = Self.unusable(head.status.code) {
                // What follows such a head cannot be framed as the client would frame it: the upstream's connection
                // is not kept, and the client gets a 502 instead (its response had not started: a 1xx may have come).
                state = .closed
                return [.respondError(.unusableResponse(problem))]
            }
            let informational = head.status.code >= 100 && head.status.code < 200 && head.status.code != 101
            // An HTTP/1.0 client is sent no 1xx (RFC 9110 §15.2): it would take one for the response.
            if informational && exchange.clientVersion == .http1_0 { return [] }
            if !informational {
                exchange.responseStarted = true
                exchange.status = Int(head.status.code)
                exchange.upstreamKeepAlive = head.isKeepAlive
            }
            let outbound = ForwardingHeaders.response(
                head,
                requestMethod: exchange.method,
                clientVersion: exchange.clientVersion,
                clientKeepAlive: exchange.clientKeepAlive
            )
            // A body ended by the close of the connection ends the client's connection too.
            exchange.clientKeepAlive = outbound.keepAlive
            state = .forwarding(exchange)
            return [.writeClient(.head(outbound.head))]
        }

        mutating func responseBody(_ bytes: ByteBuffer) -> [Action] {
            guard case .forwarding(let exchange) = state, exchange.responseStarted, !exchange.responseDone else {
                return []
            }
            return [.writeClient(.body(.byteBuffer(bytes)))]
        }

        mutating func responseEnd(_ trailers: HTTPHeaders?) -> [Action] {
            guard case .forwarding(var exchange) = state, exchange.responseStarted, !exchange.responseDone else {
                return []
            }
            exchange.responseDone = true
            state = .forwarding(exchange)
            return [.writeClient(.end(trailers))] + completeIfDone(exchange)
        }

        /// The upstream connection closed or failed.
        /// The upstream's connection ended: closed, or (`invalidResponse`) refused by the response decoder, which is
        /// the upstream's fault too but not a close (its 502 and record say the response was unusable, and it is never
        /// sent again).
        mutating func upstreamClosed(reason: String, invalidResponse: Bool = false) -> [Action] {
            switch state {
            case .awaitingUpstream:
                state = .closed
                return [.respondError(.upstreamClosed(reason))]
            case .forwarding(let exchange) where invalidResponse && !exchange.responseDone:
                state = .closed
                if !exchange.responseStarted { return [.respondError(.unusableResponse(reason))] }
                return [.abortClient(reason: "unusable upstream response mid-way: \(reason)")]
            case .forwarding(var exchange):
                if !exchange.responseStarted {
                    // A kept connection the upstream closed as this request arrived: the request goes again, once,
                    // on a new connection, when that loses nothing (the case RFC 9112 §9.3.1 lets a client retry;
                    // the client of a proxy did not reuse anything, so the proxy does it).
                    if exchange.upstreamReused, !exchange.retried, let head = exchange.replayableHead {
                        exchange.retried = true
                        exchange.upstreamReused = false
                        state = .awaitingUpstream(exchange, pending: exchange.requestDone ? [.head(head), .end(nil)] : [.head(head)])
                        return [.retryUpstream(exchange.destination)]
                    }
                    state = .closed
                    return [.respondError(.upstreamClosed(reason))]
                }
                if !exchange.responseDone {
                    state = .closed
                    return [.abortClient(reason: "upstream closed mid-response: \(reason)")]
                }
                // The response is complete; only the rest of the request body had nowhere to go.
                return []
            default:
                return []
            }
        }

        /// Why a response with status `code` cannot be relayed on this path, if it cannot: a status outside 100–599
        /// (llhttp reads a body after a 099 that a client would not), or a 101, which no request here asked for (the
        /// proxy removes `Upgrade` from every plain-HTTP request).
        static func unusable(_ code: UInt) -> String? {
            if code == 101 { return "101 Switching Protocols, which the request did not ask for" }
            if code < 100 || code > 599 { return "status \(code) is outside 100-599" }
            return nil
        }

        /// Whether a request can be sent again on a new connection: an idempotent method and no body.
        static func isReplayable(_ head: HTTPRequestHead) -> Bool {
            switch head.method {
            case .GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE: break
            default: return false
            }
            if head.headers.contains(name: "transfer-encoding") { return false }
            return head.headers[canonicalForm: "content-length"].allSatisfy { $0 == "0" }
        }

        private mutating func completeIfDone(_ exchange: Exchange) -> [Action] {
            guard exchange.requestDone, exchange.responseDone else { return [] }
            state = exchange.clientKeepAlive ? .idle : .closed
            return [
                .completeExchange(
                    keepClient: exchange.clientKeepAlive,
                    keepUpstream: exchange.upstreamKeepAlive
                )
            ]
        }
    }
}

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
        }

        enum Action: Equatable {
            /// Dial `destination` for a tunnel.
            case dialTunnel(Destination)
            /// Answer 200 and turn the connection into a relay.
            case establishTunnel
            /// Find or dial a plain-HTTP upstream for `destination`.
            case connectUpstream(Destination)
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
            switch RequestTarget.parseAbsoluteURI(head.uri) {
            case .success(let (destination, originForm)):
                let outbound = ForwardingHeaders.request(head, destination: destination, originForm: originForm)
                let exchange = Exchange(
                    destination: destination,
                    method: head.method.rawValue,
                    clientVersion: head.version,
                    clientKeepAlive: head.isKeepAlive && !head.headers.contains(name: "upgrade")
                )
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

        mutating func upstreamReady() -> [Action] {
            guard case .awaitingUpstream(let exchange, let pending) = state else { return [] }
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
            let informational = head.status.code >= 100 && head.status.code < 200 && head.status.code != 101
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
        mutating func upstreamClosed(reason: String) -> [Action] {
            switch state {
            case .awaitingUpstream:
                state = .closed
                return [.respondError(.upstreamClosed(reason))]
            case .forwarding(let exchange):
                if !exchange.responseStarted {
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

import ClientHello
import NIOCore

/// What the proxy learned from a tunnel's first client bytes.
public struct PeekResult: Sendable, Hashable {
    /// Whether the client's first bytes were a TLS handshake; `nil` when the client sent nothing in time.
    public var tls: Bool?
    /// The parsed ClientHello, when there was one.
    public var hello: ClientHello?
    /// Why there is no server name, when there is none.
    public var sniError: String?
    /// When the bytes were not TLS but a plain-HTTP request: the hosts it names (its `Host`: transparent mode reports
    /// it; each is judged inside a CONNECT tunnel).
    var httpNames: HTTPHostSniff.Names?
    public var httpHost: String? { httpNames?.host }

    init(tls: Bool?, hello: ClientHello?, sniError: String?, httpNames: HTTPHostSniff.Names? = nil) {
        self.tls = tls
        self.hello = hello
        self.sniError = sniError
        self.httpNames = httpNames
    }
}

/// Watches copies of a tunnel's first client bytes until they yield a ClientHello or a reason there is none.
///
/// Pure: the handler feeds it what it already forwarded and acts on the result. A ClientHello that arrives in
/// one segment is parsed in place; only a split one is copied, up to the limit.
struct ClientHelloPeek {
    enum Step: Equatable {
        case keepLooking
        case done(PeekResult)
    }

    /// The `sni_error` of a ClientHello without a server_name extension (a client connecting to an address).
    static let noServerName = "client sent no server name"

    /// How many times a request head that has not ended is read again as more arrives; a head sent in more pieces
    /// than that (a real client sends one to three) is not judged, so that reading it stays linear.
    static let httpRereadLimit = 64

    private let limit: Int
    private var collected: ByteBuffer?
    private(set) var isDone = false
    /// Not TLS, but the start of a plain-HTTP request (why not TLS, and how many times the head was read).
    private var http: (notTLS: String, reads: Int)?

    init(limit: Int) {
        self.limit = limit
    }

    /// Looks at `bytes`, which the handler has already passed on.
    mutating func feed(_ bytes: ByteBuffer) -> Step {
        guard !isDone else { return .keepLooking }
        if http != nil { return feedHTTP(bytes) }
        let outcome: ClientHelloParser.Outcome
        if collected == nil {
            outcome = ClientHelloParser.parse(bytes, limit: limit)
            if outcome == .needMoreData {
                var copy = ByteBufferAllocator().buffer(capacity: max(bytes.readableBytes * 2, 2048))
                copy.writeImmutableBuffer(bytes.getSlice(at: bytes.readerIndex, length: min(bytes.readableBytes, limit))!)
                collected = copy
            }
        } else {
            let room = limit - collected!.readableBytes
            if room > 0 {
                let take = min(room, bytes.readableBytes)
                collected!.writeImmutableBuffer(bytes.getSlice(at: bytes.readerIndex, length: take)!)
            }
            outcome = ClientHelloParser.parse(collected!, limit: limit)
            if outcome == .needMoreData && collected!.readableBytes >= limit {
                return finish(PeekResult(tls: true, hello: nil, sniError: "ClientHello larger than \(limit) bytes"))
            }
        }
        switch outcome {
        case .needMoreData:
            return .keepLooking
        case .parsed(let hello):
            let error = hello.serverName == nil ? Self.noServerName : nil
            return finish(PeekResult(tls: true, hello: hello, sniError: error))
        case .notTLS(let reason):
            let seen = collected ?? bytes
            switch HTTPHostSniff.sniff(seen, limit: limit) {
            case .notHTTP:
                return finish(PeekResult(tls: false, hello: nil, sniError: "not TLS: \(reason)"))
            case .names(let names):
                return finish(PeekResult(tls: false, hello: nil, sniError: "not TLS: \(reason)", httpNames: names))
            case .needMore:
                // A request whose head is still coming: read on (a Host in a later segment counts as much).
                if collected == nil {
                    var copy = ByteBufferAllocator().buffer(capacity: max(bytes.readableBytes * 2, 2048))
                    copy.writeImmutableBuffer(bytes.getSlice(at: bytes.readerIndex, length: min(bytes.readableBytes, limit))!)
                    collected = copy
                }
                http = (notTLS: "not TLS: \(reason)", reads: 1)
                return .keepLooking
            }
        case .malformed(let reason):
            return finish(PeekResult(tls: true, hello: nil, sniError: "malformed ClientHello: \(reason)"))
        case .tooLarge(let limit):
            return finish(PeekResult(tls: true, hello: nil, sniError: "ClientHello larger than \(limit) bytes"))
        }
    }

    /// More of a plain-HTTP request's head.
    private mutating func feedHTTP(_ bytes: ByteBuffer) -> Step {
        let room = limit - collected!.readableBytes
        let take = min(room, bytes.readableBytes)
        if take > 0 { collected!.writeImmutableBuffer(bytes.getSlice(at: bytes.readerIndex, length: take)!) }
        let full = collected!.readableBytes >= limit
        // Only a control byte (a line's end, or one that shows the bytes are not HTTP after all) or the limit can
        // change the answer: anything else is not read again, but for the first bytes, where a method not followed
        // by whitespace shows it.
        let early = collected!.readableBytes <= HTTPHostSniff.methodLimit + 2
        guard full || early || bytes.readableBytesView.prefix(take).contains(where: { $0 < 0x20 || $0 == 0x7f }) else {
            return .keepLooking
        }
        http!.reads += 1
        guard http!.reads <= Self.httpRereadLimit else {
            return finishHTTP(.init(host: nil, all: [], invalid: "a request head sent in more than \(Self.httpRereadLimit) pieces"))
        }
        switch HTTPHostSniff.sniff(collected!, limit: limit) {
        case .needMore:
            return .keepLooking
        case .notHTTP:
            return finish(PeekResult(tls: false, hello: nil, sniError: http!.notTLS))
        case .names(let names):
            return finishHTTP(names)
        }
    }

    private mutating func finishHTTP(_ names: HTTPHostSniff.Names) -> Step {
        finish(PeekResult(tls: false, hello: nil, sniError: http!.notTLS, httpNames: names))
    }

    /// The client sent nothing conclusive before the deadline, or closed, or the tunnel ended.
    mutating func giveUp(because why: String) -> PeekResult {
        isDone = true
        if let http {
            // A request head that never ended: the names in it cannot all be known.
            collected = nil
            return PeekResult(
                tls: false, hello: nil, sniError: http.notTLS,
                httpNames: .init(host: nil, all: [], invalid: "a request head not complete: \(why)"))
        }
        if let collected, collected.readableBytes > 0 {
            return PeekResult(tls: true, hello: nil, sniError: "incomplete ClientHello: \(why)")
        }
        collected = nil
        return PeekResult(tls: nil, hello: nil, sniError: "no client bytes: \(why)")
    }

    private mutating func finish(_ result: PeekResult) -> Step {
        isDone = true
        collected = nil
        return .done(result)
    }
}

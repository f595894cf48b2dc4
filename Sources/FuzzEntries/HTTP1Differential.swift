import HTTP1Codec
import NIOCore
import NIOEmbedded
import NIOHTTP1

/// The proxy's HTTP/1.1 codec against llhttp (SwiftNIO's decoder) on the same client byte stream.
///
/// The codec may refuse more than llhttp (it is meant to be at least as strict), and it takes any method that is
/// a token where llhttp knows a fixed list. Otherwise the two must agree: every request the codec completes,
/// llhttp completes the same (method, target, version, fields in order, body bytes, trailers; llhttp keeps the
/// whitespace after a field's value, which is not part of it, RFC 9110 §5.5); where llhttp
/// refuses, the codec has refused by then. Comparison stops after a request that ends HTTP/1.1 on the connection
/// (an `Upgrade`, CONNECT, or a request that asks to close), as the proxy stops parsing there too.
public enum HTTP1Differential {
    public struct Request: Equatable, Sendable, CustomStringConvertible {
        public var method: String
        public var target: String
        public var version: String
        public var fields: [String]
        public var body: [UInt8]
        public var trailers: [String]?
        public var endsHTTP: Bool

        public var description: String {
            "\(method) \(target) \(version) \(fields) body \(body.count) bytes trailers \(trailers ?? [])"
        }
    }

    public enum Disagreement: Error, CustomStringConvertible {
        case different(index: Int, codec: Request, llhttp: Request)
        /// The codec completed a request llhttp did not.
        case codecMoreLenient(index: Int, codec: Request, llhttpFailed: Bool)
        /// llhttp completed a request the codec neither completed nor refused (it waits for bytes llhttp did not).
        case codecWaits(index: Int, llhttp: Request)

        public var description: String {
            switch self {
            case .different(let index, let codec, let llhttp): "request \(index): codec \(codec), llhttp \(llhttp)"
            case .codecMoreLenient(let index, let codec, let failed):
                "request \(index): codec completed \(codec); llhttp \(failed ? "refused it" : "did not complete it")"
            case .codecWaits(let index, let llhttp): "request \(index): llhttp completed \(llhttp); codec waits for more"
            }
        }
    }

    /// What the comparison found, when there is no disagreement.
    public struct Agreement {
        public var requests: Int
        /// The codec refused a request llhttp took.
        public var codecStricter: Bool
    }

    /// Methods llhttp knows (its request methods); the codec also takes any other token.
    static let llhttpMethods: Set<String> = [
        "DELETE", "GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", "TRACE", "COPY", "LOCK", "MKCOL", "MOVE",
        "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY",
        "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PATCH", "PURGE", "MKCALENDAR",
        "LINK", "UNLINK", "SOURCE", "QUERY",
    ]

    public static func compare(_ bytes: UnsafeRawBufferPointer) -> Result<Agreement, Disagreement> {
        let llhttp = llhttpRequests(bytes)
        let codec = codecRequests(bytes)
        for index in 0..<min(codec.requests.count, llhttp.requests.count) {
            guard codec.requests[index] == llhttp.requests[index] else {
                return .failure(.different(index: index, codec: codec.requests[index], llhttp: llhttp.requests[index]))
            }
            if codec.requests[index].endsHTTP {
                return .success(Agreement(requests: index + 1, codecStricter: false))
            }
        }
        if codec.requests.count > llhttp.requests.count {
            let extra = codec.requests[llhttp.requests.count]
            if !llhttpMethods.contains(extra.method) {
                return .success(Agreement(requests: llhttp.requests.count, codecStricter: false))
            }
            return .failure(.codecMoreLenient(index: llhttp.requests.count, codec: extra, llhttpFailed: llhttp.failed))
        }
        if codec.requests.count < llhttp.requests.count {
            guard codec.failed else {
                return .failure(.codecWaits(index: codec.requests.count, llhttp: llhttp.requests[codec.requests.count]))
            }
            return .success(Agreement(requests: codec.requests.count, codecStricter: true))
        }
        return .success(Agreement(requests: codec.requests.count, codecStricter: codec.failed && !llhttp.failed))
    }

    // MARK: llhttp

    static func llhttpRequests(_ bytes: UnsafeRawBufferPointer) -> (requests: [Request], failed: Bool) {
        let channel = EmbeddedChannel()
        let collector = PartCollector()
        var failed = false
        do {
            try channel.pipeline.syncOperations.addHandlers([
                ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)), collector,
            ])
            var buffer = channel.allocator.buffer(capacity: bytes.count)
            buffer.writeBytes(bytes)
            try channel.writeInbound(buffer)
        } catch {
            failed = true
        }
        _ = try? channel.finish()
        return (collector.requests, failed || collector.failed)
    }

    private final class PartCollector: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        var requests: [Request] = []
        var current: Request?
        var failed = false
        /// After an upgrade or a CONNECT, llhttp's bytes are not HTTP: nothing more is taken.
        var stopped = false

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !stopped else { return }
            switch unwrapInboundIn(data) {
            case .head(let head):
                let upgrade = head.method == .CONNECT || head.headers.contains(name: "upgrade")
                current = Request(
                    method: head.method.rawValue, target: head.uri, version: "\(head.version.major).\(head.version.minor)",
                    fields: head.headers.map { "\($0.name): \(Substring($0.value).trimmedOWS())" }, body: [], trailers: nil,
                    endsHTTP: upgrade || !head.isKeepAlive)
            case .body(let bytes):
                current?.body += bytes.readableBytesView
            case .end(let trailers):
                if var request = current {
                    request.trailers = trailers.flatMap { $0.isEmpty ? nil : $0.map { "\($0.name): \(Substring($0.value).trimmedOWS())" } }
                    requests.append(request)
                    if request.endsHTTP { stopped = true }
                }
                current = nil
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            failed = true
        }
    }

    // MARK: the codec

    static func codecRequests(_ bytes: UnsafeRawBufferPointer) -> (requests: [Request], failed: Bool) {
        var buffer = ByteBuffer(bytes: bytes)
        var decoder = HTTP1MessageDecoder(kind: .request, limits: .init(startLine: 80 * 1024, headerBytes: 80 * 1024, fields: 1000))
        var requests: [Request] = []
        var current: Request?
        while true {
            switch decoder.next(&buffer) {
            case .needMore:
                return (requests, false)
            case .invalid:
                return (requests, true)
            case .part(.head(let head)):
                current = Request(
                    method: head.method, target: head.target, version: "\(head.version.major).\(head.version.minor)",
                    fields: head.fieldStrings.map { "\($0.name): \($0.value)" }, body: [], trailers: nil,
                    endsHTTP: head.methodIs("CONNECT") || !head.indices(of: "upgrade").isEmpty || !keepsAlive(head))
            case .part(.body(let bytes)):
                current?.body += bytes.readableBytesView
            case .part(.end(let trailers)):
                guard var request = current else { return (requests, true) }
                request.trailers = trailers?.fieldStrings.map { "\($0.name): \($0.value)" }
                requests.append(request)
                current = nil
                if request.endsHTTP { return (requests, false) }
            }
        }
    }

    /// Whether the connection stays open after this request (RFC 9112 §9.3): HTTP/1.1 unless `close`, HTTP/1.0
    /// only with `keep-alive`.
    static func keepsAlive(_ head: HTTP1Head) -> Bool {
        var close = false
        var keepAlive = false
        for index in head.indices(of: "connection") {
            for token in head.value(index).split(separator: ",") {
                let token = token.trimmedOWS().lowercased()
                if token == "close" { close = true }
                if token == "keep-alive" { keepAlive = true }
            }
        }
        if close { return false }
        return head.version == (1, 1) ? true : keepAlive
    }
}

extension Substring {
    func trimmedOWS() -> Substring {
        let characters: Set<Character> = [" ", "\t"]
        var slice = self
        while let first = slice.first, characters.contains(first) { slice = slice.dropFirst() }
        while let last = slice.last, characters.contains(last) { slice = slice.dropLast() }
        return slice
    }
}

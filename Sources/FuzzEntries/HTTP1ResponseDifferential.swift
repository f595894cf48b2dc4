import HTTP1Codec
import NIOCore
import NIOEmbedded
import NIOHTTP1

/// The proxy's HTTP/1.1 codec against llhttp (SwiftNIO's response decoder) on the same origin byte stream: what an
/// upstream sends, read as the inspected path reads it.
///
/// The input's first byte says which requests the responses answer: bit i set, the i-th final response answers a
/// HEAD (no body whatever its fields say), else a GET; the rest is the upstream's bytes, then the end of the stream.
/// Interim (1xx) responses answer no request of their own. The codec may refuse more than llhttp; otherwise every
/// response it completes, llhttp completes the same (status, version, fields in order, body bytes, trailers), and
/// where llhttp refuses the codec has refused by then. Comparison stops after a response that ends HTTP/1.1 on the
/// connection (a `101`, one that closes it, or one whose body runs until the close), as the proxy stops reading there.
public enum HTTP1ResponseDifferential {
    /// Compared without `endsHTTP`: where either reader ends HTTP after a response, comparison stops there. (llhttp
    /// judges keep-alive before it knows a response has no body: it ends a response to HEAD that has no length,
    /// which RFC 9112 leaves open, as the codec does.)
    public struct Response: Equatable, Sendable, CustomStringConvertible {
        public var status: Int
        public var version: String
        public var fields: [String]
        public var body: [UInt8]
        public var trailers: [String]?
        public var endsHTTP: Bool

        public var description: String {
            "\(status) \(version) \(fields) body \(body.count) bytes trailers \(trailers ?? [])\(endsHTTP ? ", ends HTTP" : "")"
        }

        public static func == (a: Response, b: Response) -> Bool {
            a.status == b.status && a.version == b.version && a.fields == b.fields && a.body == b.body
                && a.trailers == b.trailers
        }
    }

    public enum Disagreement: Error, CustomStringConvertible {
        case different(index: Int, codec: Response, llhttp: Response)
        /// The codec completed a response llhttp did not.
        case codecMoreLenient(index: Int, codec: Response, llhttpFailed: Bool)
        /// llhttp completed a response the codec neither completed nor refused.
        case codecWaits(index: Int, llhttp: Response)

        public var description: String {
            switch self {
            case .different(let index, let codec, let llhttp): "response \(index): codec \(codec), llhttp \(llhttp)"
            case .codecMoreLenient(let index, let codec, let failed):
                "response \(index): codec completed \(codec); llhttp \(failed ? "refused it" : "did not complete it")"
            case .codecWaits(let index, let llhttp): "response \(index): llhttp completed \(llhttp); codec waits for more"
            }
        }
    }

    public struct Agreement {
        public var responses: Int
        /// The codec refused a response llhttp took.
        public var codecStricter: Bool
    }

    /// How many final responses the first byte can mark as answering HEAD.
    static let requests = 8

    public static func compare(_ input: UnsafeRawBufferPointer) -> Result<Agreement, Disagreement> {
        guard let heads = input.first else { return .success(Agreement(responses: 0, codecStricter: false)) }
        let bytes = UnsafeRawBufferPointer(rebasing: input.dropFirst())
        let llhttp = llhttpResponses(bytes, heads: heads)
        let codec = codecResponses(bytes, heads: heads)
        for index in 0..<min(codec.responses.count, llhttp.responses.count) {
            guard codec.responses[index] == llhttp.responses[index] else {
                return .failure(.different(index: index, codec: codec.responses[index], llhttp: llhttp.responses[index]))
            }
            if codec.responses[index].endsHTTP || llhttp.responses[index].endsHTTP {
                return .success(Agreement(responses: index + 1, codecStricter: false))
            }
        }
        if codec.responses.count > llhttp.responses.count {
            return .failure(.codecMoreLenient(
                index: llhttp.responses.count, codec: codec.responses[llhttp.responses.count], llhttpFailed: llhttp.failed))
        }
        if codec.responses.count < llhttp.responses.count {
            guard codec.failed else {
                return .failure(.codecWaits(index: codec.responses.count, llhttp: llhttp.responses[codec.responses.count]))
            }
            return .success(Agreement(responses: codec.responses.count, codecStricter: true))
        }
        return .success(Agreement(responses: codec.responses.count, codecStricter: codec.failed && !llhttp.failed))
    }

    static func answersHEAD(_ heads: UInt8, final index: Int) -> Bool {
        index < requests && heads & (1 << UInt8(index)) != 0
    }

    // MARK: llhttp

    static func llhttpResponses(_ bytes: UnsafeRawBufferPointer, heads: UInt8) -> (responses: [Response], failed: Bool) {
        let channel = EmbeddedChannel()
        let collector = PartCollector()
        var failed = false
        do {
            try channel.pipeline.syncOperations.addHandlers([
                ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .forward)),
                collector,
            ])
            // The decoder learns what each response answers from the request heads written through it.
            for index in 0..<requests {
                let method: HTTPMethod = answersHEAD(heads, final: index) ? .HEAD : .GET
                try channel.writeOutbound(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: method, uri: "/")))
            }
            var buffer = channel.allocator.buffer(capacity: bytes.count)
            buffer.writeBytes(bytes)
            try channel.writeInbound(buffer)
        } catch {
            failed = true
        }
        // The end of the stream: a body that runs until the close ends here.
        do { _ = try channel.finish() } catch { failed = true }
        return (collector.responses, failed || collector.failed)
    }

    private final class PartCollector: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        var responses: [Response] = []
        var current: Response?
        var failed = false
        var stopped = false

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !stopped else { return }
            switch unwrapInboundIn(data) {
            case .head(let head):
                let response = Response(
                    status: Int(head.status.code), version: "\(head.version.major).\(head.version.minor)",
                    fields: head.headers.map { "\($0.name): \(Substring($0.value).trimmedOWS())" }, body: [],
                    trailers: nil, endsHTTP: head.status.code == 101 || !head.isKeepAlive)
                if (100..<200).contains(head.status.code) && head.status.code != 101 {
                    // An interim response: llhttp sends no end for it.
                    responses.append(response)
                } else {
                    current = response
                }
            case .body(let bytes):
                current?.body += bytes.readableBytesView
            case .end(let trailers):
                if var response = current {
                    response.trailers = trailers.flatMap {
                        $0.isEmpty ? nil : $0.map { "\($0.name): \(Substring($0.value).trimmedOWS())" }
                    }
                    responses.append(response)
                    if response.endsHTTP { stopped = true }
                }
                current = nil
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            failed = true
        }
    }

    // MARK: the codec

    static func codecResponses(_ bytes: UnsafeRawBufferPointer, heads: UInt8) -> (responses: [Response], failed: Bool) {
        var buffer = ByteBuffer(bytes: bytes)
        var decoder = HTTP1MessageDecoder(kind: .response, limits: .init(startLine: 80 * 1024, headerBytes: 80 * 1024, fields: 1000))
        var responses: [Response] = []
        var current: Response?
        var finals = 0
        while true {
            decoder.answeringHEAD = answersHEAD(heads, final: finals)
            switch decoder.next(&buffer) {
            case .needMore:
                // The end of the stream: the end of a body that runs until the close, or an error.
                switch decoder.inputEnded(buffer) {
                case .part(.end(let trailers)):
                    guard var response = current else { return (responses, true) }
                    response.trailers = trailers?.fieldStrings.map { "\($0.name): \($0.value)" }
                    responses.append(response)
                    return (responses, false)
                case .invalid:
                    return (responses, true)
                default:
                    return (responses, false)
                }
            case .invalid:
                return (responses, true)
            case .part(.head(let head)):
                current = Response(
                    status: head.status, version: "\(head.version.major).\(head.version.minor)",
                    fields: head.fieldStrings.map { "\($0.name): \($0.value)" }, body: [], trailers: nil,
                    endsHTTP: head.status == 101 || !HTTP1Differential.keepsAlive(head) || head.bodyFraming == .untilClose)
            case .part(.body(let part)):
                current?.body += part.readableBytesView
            case .part(.end(let trailers)):
                guard var response = current else { return (responses, true) }
                response.trailers = trailers?.fieldStrings.map { "\($0.name): \($0.value)" }
                responses.append(response)
                current = nil
                if !(100..<200).contains(response.status) || response.status == 101 { finals += 1 }
                if response.endsHTTP { return (responses, false) }
            }
        }
    }
}

import ClientHello
import EgressProxy
import HTTP1Codec
import NIOCore
import NIOEmbedded
import NIOHTTP1

/// What each fuzz target does with one input: the proxy's own parsers, fed exactly as the proxy feeds them.
/// The libFuzzer executables in Fuzz/ call these, and so does the test that replays the seed corpus, so a crash
/// the fuzzer finds becomes a test once its input is added to Tests/FuzzCorpus.
public enum FuzzEntries {
    /// The TLS ClientHello parser, on a tunnel's first bytes.
    public static func clientHello(_ bytes: UnsafeRawBufferPointer) {
        switch ClientHelloParser.parse(bytes: bytes) {
        case .parsed(let hello):
            // Whatever was found must be usable as the proxy uses it.
            _ = hello.serverName?.utf8.count
            _ = hello.alpn.map { $0.utf8.count }
        default:
            break
        }
    }

    /// A client's byte stream through the request-head limits and the HTTP request decoder, then every head
    /// through what the proxy does with it: the CONNECT authority or absolute URI, the forwarded head, and the
    /// framing checks; then through the inspected path's codec and the checks on its heads.
    public static func requestHeads(_ bytes: UnsafeRawBufferPointer) {
        var limits = RequestHeadLimits()
        limits.headerTimeout = .hours(1)
        let channel = EmbeddedChannel()
        let heads = HeadCollector()
        do {
            try channel.pipeline.syncOperations.addHandlers([
                RequestHeadLimitHandler(limits: limits),
                ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes)),
                heads,
            ])
            var buffer = channel.allocator.buffer(capacity: bytes.count)
            buffer.writeBytes(bytes)
            try channel.writeInbound(buffer)
            _ = try? channel.finish()
        } catch {
            // A refused stream is an answer, not a crash.
        }
        for head in heads.heads {
            if head.method == .CONNECT {
                if case .success(let destination) = RequestTarget.parseAuthority(head.uri) {
                    _ = destination.description
                }
            } else if case .success(let (destination, originForm)) = RequestTarget.parseAbsoluteURI(head.uri) {
                _ = ForwardingHeaders.request(head, destination: destination, originForm: originForm)
            }
            _ = InterceptedExchangeStateMachine.framingProblem(with: head)
        }
        // The inspected path's codec and its checks, on the same stream.
        var buffer = ByteBuffer(bytes: bytes)
        var decoder = HTTP1MessageDecoder(kind: .request)
        for _ in 0..<10_000 {
            guard case .part(let part) = decoder.next(&buffer) else { break }
            if case .head(let head) = part { _ = InterceptedExchangeStateMachine.problem(with: head) }
        }
        // The scanner on its own.
        var scanner = RequestHeadScanner(limits: RequestHeadLimits())
        _ = scanner.scan(bytes)
    }

    /// The CONNECT authority parser: what parses must print back to an authority that parses the same.
    public static func connectAuthority(_ bytes: UnsafeRawBufferPointer) {
        let text = String(decoding: bytes, as: UTF8.self)
        guard case .success(let destination) = RequestTarget.parseAuthority(text) else { return }
        guard case .success(let again) = RequestTarget.parseAuthority(destination.description), again == destination else {
            fatalError("\(text.debugDescription) parsed to \(destination), which does not parse back to itself")
        }
    }
}

/// Keeps the request heads the decoder produced.
private final class HeadCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    var heads: [HTTPRequestHead] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data) { heads.append(head) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {}
}

extension FuzzEntries {
    /// The proxy's HTTP/1.1 codec against llhttp on one client byte stream (`HTTP1Differential`): a
    /// disagreement stops the process, with both readings.
    public static func http1Differential(_ bytes: UnsafeRawBufferPointer) {
        if case .failure(let disagreement) = HTTP1Differential.compare(bytes) {
            fatalError("the codec and llhttp disagree on \(Array(bytes)): \(disagreement)")
        }
    }

    /// Origin bytes (after a first byte saying which responses answer HEAD): the codec and llhttp must agree.
    public static func http1ResponseDifferential(_ bytes: UnsafeRawBufferPointer) {
        if case .failure(let disagreement) = HTTP1ResponseDifferential.compare(bytes) {
            fatalError("the codec and llhttp disagree on the response bytes \(Array(bytes)): \(disagreement)")
        }
    }
}

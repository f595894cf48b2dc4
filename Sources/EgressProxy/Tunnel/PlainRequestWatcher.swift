import HTTP1Codec
import NIOCore

/// The requests of a plain-HTTP tunnel after its first, in enforce mode when the policies judge names: each head's
/// names, found with the same strict framing the inspected path uses (a body of a stated length or chunked, then the
/// next head), so a keep-alive or pipelined request that names a blocked host is refused before its head is sent on
/// whole. A message that cannot be framed cannot be judged. Pure: the tunnel feeds it the client's bytes before
/// passing them on.
struct PlainRequestWatcher {
    enum Finding: Equatable {
        /// A complete request head and the names it gives; `start`: how many of the tunnel's bytes (counted from
        /// the first fed) came before it.
        case head(HTTPHostSniff.Names, start: Int)
        /// The bytes cannot be framed as requests (why), from `start` on: the rest of the tunnel cannot be judged.
        case unreadable(String, start: Int)
    }

    /// How many bytes were fed before the last `feed`.
    private(set) var fedBefore = 0
    private var fed = 0
    /// How many bytes were dropped from `buffer` once decoded.
    private var discarded = 0

    private var decoder: HTTP1MessageDecoder
    private var buffer = ByteBuffer()
    /// An `Upgrade` or CONNECT request ended HTTP on the tunnel (its own names were judged): nothing more is read.
    private(set) var stopped = false
    private let limit: Int

    init(limit: Int) {
        self.limit = limit
        self.decoder = HTTP1MessageDecoder(
            kind: .request, limits: .init(startLine: limit, headerBytes: limit, fields: 10_000))
    }

    /// The heads completed by `bytes` (the client's, in order), with their names.
    mutating func feed(_ bytes: ByteBuffer) -> [Finding] {
        guard !stopped else { return [] }
        fedBefore = fed
        fed += bytes.readableBytes
        var bytes = bytes
        buffer.writeBuffer(&bytes)
        var findings: [Finding] = []
        while !stopped {
            let start = discarded + buffer.readerIndex
            switch decoder.next(&buffer) {
            case .needMore:
                if decoder.hasStopped { stopped = true }
                discarded += buffer.readerIndex
                buffer.discardReadBytes()
                return findings
            case .invalid(let error):
                stopped = true
                findings.append(.unreadable("a request that cannot be framed (\(error))", start: start))
            case .part(.head(let head)):
                let names = HTTPHostSniff.names(in: head.bytes, limit: limit)
                    ?? .init(host: nil, all: [], invalid: "a request head the host sniffer cannot read")
                findings.append(.head(names, start: start))
                if head.indices(of: "upgrade").isEmpty == false { stopped = true }
            case .part(.body), .part(.end):
                continue
            }
        }
        return findings
    }
}

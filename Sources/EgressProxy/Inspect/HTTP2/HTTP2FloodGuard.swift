import NIOCore

/// Reads the frame headers of one side's HTTP/2 byte stream, both ways, and finds the floods NIOHTTP2Handler lets
/// through because their frames are queued for a stream rather than handled at once: a stream that is not being
/// read (the proxy stops reading one whose other half cannot take more) keeps every frame that arrives for it, and
/// only DATA is bounded by flow control. Two such floods are counted per stream:
/// - WINDOW_UPDATEs from the peer beyond what the DATA sent to it could call for: one per frame and one per KiB
///   (Go's HTTP/2 sends one for every 4 KiB its reader takes), and some slack;
/// - HEADERS from the peer beyond a request's or response's (its head, 1xx heads, trailers).
/// It also notes, when asked to, the RST_STREAM frames written to the peer (`takeResets`): a stream the HTTP/2 layer
/// refused before any handler saw it is known only by its reset.
/// Pure: `HTTP2FloodGuardHandler` feeds it the bytes and closes the connection on a flood.
struct HTTP2FrameCounter {
    enum Direction { case inbound, outbound }

    /// WINDOW_UPDATEs a stream may get beyond one per DATA frame and one per KiB of DATA sent on it.
    static let windowUpdateSlack = 128
    /// HEADERS frames a stream may carry from the peer: a head, several 1xx heads, trailers.
    static let headersPerStream = 16
    /// Streams whose counts are kept; beyond it the lowest stream IDs are forgotten (they are the oldest).
    static let trackedStreams = 4_096

    private struct Reader {
        /// Bytes still to skip before the first frame (the client's connection preface).
        var skip: Int
        var header: [UInt8] = []
        var payloadLeft = 0
        /// The stream of the RST_STREAM frame being read (outbound, when resets are watched), and its error code's
        /// bytes so far.
        var resetStream: UInt32?
        var resetCode: [UInt8] = []
    }

    /// A RST_STREAM frame written to the peer.
    struct Reset: Equatable {
        var stream: UInt32
        var code: UInt32
    }

    private struct Counts {
        var windowUpdates = 0
        var headers = 0
        var dataFramesSent = 0
        var dataBytesSent = 0
    }

    private var readers: (inbound: Reader, outbound: Reader)
    private var streams: [UInt32: Counts] = [:]
    private let watchesResets: Bool
    /// RST_STREAM frames written since the last `takeResets`.
    private var resets: [Reset] = []

    /// - Parameters:
    ///   - prefaceFrom: the direction that starts with the 24-byte client preface (`PRI * HTTP/2.0…`):
    ///     inbound on the client's side, outbound on the upstream's.
    ///   - watchesResets: note the RST_STREAM frames written (`takeResets`).
    init(prefaceFrom: Direction, watchesResets: Bool = false) {
        readers = (Reader(skip: prefaceFrom == .inbound ? 24 : 0), Reader(skip: prefaceFrom == .outbound ? 24 : 0))
        self.watchesResets = watchesResets
    }

    /// The RST_STREAM frames written since the last call, in order.
    mutating func takeResets() -> [Reset] {
        guard !resets.isEmpty else { return [] }
        defer { resets.removeAll(keepingCapacity: true) }
        return resets
    }

    /// Counts the frames in `bytes`; a description of the flood once the peer has sent one.
    mutating func consume(_ bytes: UnsafeRawBufferPointer, _ direction: Direction) -> String? {
        // Taken out, not copied, so its buffers stay uniquely referenced and are appended to in place.
        var reader: Reader
        if direction == .inbound {
            reader = readers.inbound
            readers.inbound = Reader(skip: 0)
        } else {
            reader = readers.outbound
            readers.outbound = Reader(skip: 0)
        }
        defer {
            if direction == .inbound { readers.inbound = reader } else { readers.outbound = reader }
        }
        var index = 0
        while index < bytes.count {
            if reader.skip > 0 {
                let skipped = min(reader.skip, bytes.count - index)
                reader.skip -= skipped
                index += skipped
                continue
            }
            if reader.payloadLeft > 0 {
                let skipped = min(reader.payloadLeft, bytes.count - index)
                if let stream = reader.resetStream {
                    reader.resetCode.append(contentsOf: bytes[index..<(index + skipped)])
                    if reader.resetCode.count == 4 {
                        let code = reader.resetCode.reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                        resets.append(Reset(stream: stream, code: code))
                        reader.resetStream = nil
                        reader.resetCode.removeAll(keepingCapacity: true)
                    }
                }
                reader.payloadLeft -= skipped
                index += skipped
                continue
            }
            let wanted = min(9 - reader.header.count, bytes.count - index)
            reader.header.append(contentsOf: bytes[index..<(index + wanted)])
            index += wanted
            guard reader.header.count == 9 else { continue }
            let header = reader.header
            reader.header.removeAll(keepingCapacity: true)
            let length = Int(header[0]) << 16 | Int(header[1]) << 8 | Int(header[2])
            let type = header[3]
            let stream = (UInt32(header[5]) << 24 | UInt32(header[6]) << 16 | UInt32(header[7]) << 8 | UInt32(header[8]))
                & 0x7fff_ffff
            reader.payloadLeft = length
            if watchesResets, direction == .outbound, type == 0x3, length == 4, stream != 0 {
                reader.resetStream = stream
            }
            if let flood = count(type: type, stream: stream, length: length, direction) { return flood }
        }
        return nil
    }

    private mutating func count(type: UInt8, stream: UInt32, length: Int, _ direction: Direction) -> String? {
        guard stream != 0 else { return nil }  // connection-level frames are handled at once
        switch (type, direction) {
        case (0x0, .outbound):  // DATA sent to the peer
            var counts = streams[stream, default: Counts()]
            counts.dataFramesSent += 1
            counts.dataBytesSent += length
            streams[stream] = counts
        case (0x8, .inbound):  // WINDOW_UPDATE from the peer
            var counts = streams[stream, default: Counts()]
            counts.windowUpdates += 1
            streams[stream] = counts
            if counts.windowUpdates > counts.dataFramesSent + counts.dataBytesSent / 1024 + Self.windowUpdateSlack {
                return "\(counts.windowUpdates) WINDOW_UPDATE frames on stream \(stream), which was sent \(counts.dataFramesSent) DATA frames (\(counts.dataBytesSent) bytes)"
            }
        case (0x1, .inbound):  // HEADERS from the peer
            var counts = streams[stream, default: Counts()]
            counts.headers += 1
            streams[stream] = counts
            if counts.headers > Self.headersPerStream {
                return "\(counts.headers) HEADERS frames on stream \(stream)"
            }
        default:
            return nil
        }
        if streams.count > Self.trackedStreams {
            for old in streams.keys.sorted().prefix(streams.count - Self.trackedStreams / 2) { streams[old] = nil }
        }
        return nil
    }
}

/// Below one side's `NIOHTTP2Handler`, above its TLS: counts frames (`HTTP2FrameCounter`) and closes the connection
/// when the peer floods a stream, before those frames can pile up in the proxy.
final class HTTP2FloodGuardHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var counter: HTTP2FrameCounter
    private var flooded = false
    private let onFlood: (String) -> Void
    private let onReset: ((HTTP2FrameCounter.Reset) -> Void)?

    /// - Parameter onReset: told of every RST_STREAM frame written to the peer, as it passes.
    init(
        prefaceFrom: HTTP2FrameCounter.Direction, onFlood: @escaping (String) -> Void,
        onReset: ((HTTP2FrameCounter.Reset) -> Void)? = nil
    ) {
        counter = HTTP2FrameCounter(prefaceFrom: prefaceFrom, watchesResets: onReset != nil)
        self.onFlood = onFlood
        self.onReset = onReset
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !flooded else { return }
        let bytes = unwrapInboundIn(data)
        if let flood = bytes.withUnsafeReadableBytes({ counter.consume($0, .inbound) }) {
            flooded = true
            onFlood(flood)
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data)
        _ = bytes.withUnsafeReadableBytes { counter.consume($0, .outbound) }
        if let onReset {
            for reset in counter.takeResets() { onReset(reset) }
        }
        context.write(data, promise: promise)
    }
}

@available(*, unavailable)
extension HTTP2FloodGuardHandler: Sendable {}

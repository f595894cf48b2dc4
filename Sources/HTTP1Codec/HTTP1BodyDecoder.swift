import NIOCore

/// Takes one message's body off a byte stream, framed as its head said (`HTTP1BodyFraming`). Body bytes come out
/// as slices of the input (never copied, never gathered whole); a chunked body's chunk lines and extensions are
/// checked and dropped, its trailer fields parsed like a head's. Refused: a chunk size that is not hex or does not
/// fit in 62 bits, whitespace after a chunk size or anywhere in an extension (RFC 9112 allows it around `;` and
/// `=`; llhttp does not, and neither does this), an extension that is not `;name[=token|"quoted"]`, chunk data
/// not followed by CRLF, bare LF or CR
/// anywhere in the framing, and a framing or connection field among the trailers (`isForbiddenTrailer`).
public struct HTTP1BodyDecoder: Sendable {
    public enum Event: Sendable {
        /// Body bytes (not empty).
        case body(ByteBuffer)
        /// The body ended; a chunked one's trailer fields, if it had any.
        case end(trailers: HTTP1Head?)
        /// Nothing more until more bytes come.
        case needMore
        case invalid(HTTP1ParseError)
    }

    private enum State: Sendable {
        case length(remaining: Int)
        case untilClose
        case chunkSize(value: Int, digits: Int)
        case chunkExtension(value: Int, bytes: Int, at: ExtensionPart)
        case chunkLineFeed(value: Int)
        case chunkData(remaining: Int)
        case chunkDataCR
        case chunkDataLF
        case trailers(HTTP1HeadParser)
        /// The body is complete: `.end` is next.
        case ending
        case done
        case failed
    }

    /// Where in a chunk extension (RFC 9112 §7.1.1: `;name`, then optionally `=token` or `="quoted"`; no
    /// whitespace, which llhttp refuses too) the next byte is.
    enum ExtensionPart: Sendable {
        case name(empty: Bool)
        case valueStart
        case token
        case quoted
        case quotedPair
        case quotedEnd
    }

    /// Bytes of one chunk line's extensions: they are dropped, but not read forever.
    public static let chunkExtensionLimit = 16 * 1024

    private var state: State

    /// - Parameter trailerLimits: for a chunked body's trailer section (its `startLine` is not used).
    public init(framing: HTTP1BodyFraming, trailerLimits: HTTP1HeadParser.Limits = .init()) {
        switch framing {
        case .none: state = .ending
        case .length(let length): state = length > 0 ? .length(remaining: length) : .ending
        case .chunked: state = .chunkSize(value: 0, digits: 0)
        case .untilClose: state = .untilClose
        }
        self.trailerLimits = trailerLimits
    }

    private let trailerLimits: HTTP1HeadParser.Limits

    /// The body's `.end` has been returned.
    public var isDone: Bool {
        if case .done = state { return true }
        return false
    }

    /// The next event from `buffer`, whose reader index moves past what it used. Call again until `.needMore`
    /// (bytes left in `buffer` are a later message's, or an incomplete chunk line or trailer section to give back
    /// with more bytes after it) or `.end`.
    public mutating func next(_ buffer: inout ByteBuffer) -> Event {
        while true {
            switch state {
            case .ending:
                state = .done
                return .end(trailers: nil)
            case .done:
                return .needMore
            case .failed:
                return .needMore
            case .length(let remaining):
                guard buffer.readableBytes > 0 else { return .needMore }
                let count = min(remaining, buffer.readableBytes)
                let slice = buffer.readSlice(length: count)!
                state = remaining == count ? .ending : .length(remaining: remaining - count)
                return .body(slice)
            case .untilClose:
                guard buffer.readableBytes > 0 else { return .needMore }
                return .body(buffer.readSlice(length: buffer.readableBytes)!)
            case .chunkData(let remaining):
                guard buffer.readableBytes > 0 else { return .needMore }
                let count = min(remaining, buffer.readableBytes)
                let slice = buffer.readSlice(length: count)!
                state = remaining == count ? .chunkDataCR : .chunkData(remaining: remaining - count)
                return .body(slice)
            case .trailers(var parser):
                switch parser.parse(&buffer) {
                case .needMore:
                    state = .trailers(parser)
                    return .needMore
                case .invalid(let error):
                    state = .failed
                    return .invalid(error)
                case .head(let trailers):
                    // Trailer fields never frame, route or manage the connection (RFC 9110 §6.5.1): such a field
                    // there means different things to different parsers (llhttp acts on a Connection: close).
                    for index in trailers.fields.indices where Self.isForbiddenTrailer(trailers, index) {
                        state = .failed
                        return .invalid(.forbiddenTrailer)
                    }
                    state = .done
                    return .end(trailers: trailers.fields.isEmpty ? nil : trailers)
                }
            case .chunkSize, .chunkExtension, .chunkLineFeed, .chunkDataCR, .chunkDataLF:
                guard buffer.readableBytes > 0 else { return .needMore }
                if let error = readChunkFraming(&buffer) {
                    state = .failed
                    return .invalid(error)
                }
            }
        }
    }

    /// The stream ended (EOF or close_notify): the end of a body that runs until the close, or an error for one
    /// cut short.
    public mutating func inputEnded() -> Event {
        switch state {
        case .untilClose:
            state = .done
            return .end(trailers: nil)
        case .done, .failed:
            return .needMore
        case .ending:
            state = .done
            return .end(trailers: nil)
        default:
            state = .failed
            return .invalid(.incompleteMessage)
        }
    }

    /// Reads the bytes of chunk lines (size, extensions, CRLFs) until chunk data, the trailer section, or the end
    /// of `buffer`.
    private mutating func readChunkFraming(_ buffer: inout ByteBuffer) -> HTTP1ParseError? {
        var used = 0
        let error: HTTP1ParseError? = buffer.withUnsafeReadableBytes { bytes in
            while used < bytes.count {
                let byte = bytes[used]
                used += 1
                switch state {
                case .chunkSize(let value, let digits):
                    if let digit = hexValue(byte) {
                        guard value <= (Int.max >> 5) else { return .chunkSizeOverflow }
                        state = .chunkSize(value: value << 4 | digit, digits: digits + 1)
                    } else if digits == 0 {
                        return .invalidChunkSize
                    } else if byte == UInt8(ascii: ";") {
                        state = .chunkExtension(value: value, bytes: 0, at: .name(empty: true))
                    } else if byte == cr {
                        state = .chunkLineFeed(value: value)
                    } else {
                        return byte == lf ? .invalidLineEnding : .invalidChunkSize
                    }
                case .chunkExtension(let value, let count, let part):
                    guard count < Self.chunkExtensionLimit else { return .invalidChunkExtension }
                    guard let next = Self.extensionPart(after: part, byte) else {
                        return byte == lf ? .invalidLineEnding : .invalidChunkExtension
                    }
                    if let next {
                        state = .chunkExtension(value: value, bytes: count + 1, at: next)
                    } else {
                        state = .chunkLineFeed(value: value)
                    }
                case .chunkLineFeed(let value):
                    guard byte == lf else { return .invalidLineEnding }
                    if value == 0 {
                        state = .trailers(HTTP1HeadParser(kind: .trailers, limits: trailerLimits))
                    } else {
                        state = .chunkData(remaining: value)
                    }
                    return nil
                case .chunkDataCR:
                    guard byte == cr else { return .invalidChunkEnd }
                    state = .chunkDataLF
                case .chunkDataLF:
                    guard byte == lf else { return .invalidChunkEnd }
                    state = .chunkSize(value: 0, digits: 0)
                default:
                    return nil
                }
            }
            return nil
        }
        buffer.moveReaderIndex(forwardBy: used)
        return error
    }
}

extension HTTP1BodyDecoder {
    /// Content-Length, Transfer-Encoding, Connection, Keep-Alive, Upgrade or Host.
    static func isForbiddenTrailer(_ trailers: HTTP1Head, _ index: Int) -> Bool {
        trailers.nameIs(index, "content-length") || trailers.nameIs(index, "transfer-encoding")
            || trailers.nameIs(index, "connection") || trailers.nameIs(index, "keep-alive")
            || trailers.nameIs(index, "upgrade") || trailers.nameIs(index, "host")
    }

    /// The part of a chunk extension `byte` moves to from `part`: `.some(nil)` when it is the CR that ends the chunk
    /// line, nil when it does not belong there.
    fileprivate static func extensionPart(after part: ExtensionPart, _ byte: UInt8) -> ExtensionPart?? {
        let semicolon = UInt8(ascii: ";")
        let quote = UInt8(ascii: "\"")
        switch part {
        case .name(let empty):
            if isTokenByte(byte) { return .name(empty: false) }
            guard !empty else { return nil }
            if byte == UInt8(ascii: "=") { return .valueStart }
            if byte == semicolon { return .name(empty: true) }
            return byte == cr ? .some(nil) : nil
        case .valueStart:
            if byte == quote { return .quoted }
            return isTokenByte(byte) ? .token : nil
        case .token:
            if isTokenByte(byte) { return .token }
            if byte == semicolon { return .name(empty: true) }
            return byte == cr ? .some(nil) : nil
        case .quoted:
            if byte == quote { return .quotedEnd }
            if byte == UInt8(ascii: "\\") { return .quotedPair }
            // qdtext: HTAB, SP and visible characters but the quote and the backslash, obs-text.
            return isFieldValueByte(byte) ? .quoted : nil
        case .quotedPair:
            return isFieldValueByte(byte) ? .quoted : nil
        case .quotedEnd:
            if byte == semicolon { return .name(empty: true) }
            return byte == cr ? .some(nil) : nil
        }
    }
}

@inline(__always) private func hexValue(_ byte: UInt8) -> Int? {
    if isDigit(byte) { return Int(byte - zero) }
    let lower = byte | 0x20
    if lower >= UInt8(ascii: "a") && lower <= UInt8(ascii: "f") { return Int(lower - UInt8(ascii: "a")) + 10 }
    return nil
}

import HTTP1Codec
import NIOCore

/// A request part as the inspected path forwards it upstream.
enum RelayedRequestPart {
    /// A head as the client sent it; with `withoutCloseOption`, its Connection fields lose `close` on the way
    /// (the upstream's connection may serve another client connection).
    case head(HTTP1Head, withoutCloseOption: Bool)
    case body(ByteBuffer)
    case end(trailers: HTTP1Head?)
}

/// A response part as the inspected path passes it to the client.
enum RelayedResponsePart {
    /// A head as the upstream sent it; with `announcingClose`, its Connection fields say `close` (the client
    /// asked to close, and the upstream was not told).
    case head(HTTP1Head, announcingClose: Bool)
    case body(ByteBuffer)
    case end(trailers: HTTP1Head?)
}

/// Writes inspected requests upstream: each head's bytes as the client sent them (the codec checked every one),
/// edited only where the proxy must, a body with a Content-Length as it came, a chunked one re-chunked (its
/// extensions dropped) under one `Transfer-Encoding: chunked`, trailers as they came. What its framing does not
/// allow is never written: the connection is closed instead.
struct RelayedRequestWriter {
    fileprivate enum Framing {
        case none
        case length(remaining: Int)
        case chunked
        case failed
    }

    private var framing = Framing.none

    /// The bytes for `part`; nil when nothing goes out for it; an error when the request cannot be framed as it
    /// must (the caller closes the connection).
    mutating func serialize(_ part: RelayedRequestPart, allocator: ByteBufferAllocator) -> Result<ByteBuffer?, RelayedRequestEncoder.UnframeableRequest> {
        switch part {
        case .head(let head, let withoutCloseOption):
            guard case .none = framing else { return refuse("a request head before the last request ended") }
            switch head.bodyFraming.map({ .success($0) }) ?? HTTP1BodyFraming.request(head) {
            case .success(.none): framing = .none
            case .success(.length(let length)): framing = .length(remaining: length)
            case .success(.chunked): framing = .chunked
            case .success(.untilClose), .failure: return refuse("framing it cannot keep")
            }
            return .success(Self.head(head, withoutCloseOption: withoutCloseOption, chunked: framing.isChunked, allocator: allocator))
        case .body(var bytes):
            switch framing {
            case .failed:
                return refuse("the request was refused")
            case .none:
                return bytes.readableBytes == 0 ? .success(nil) : refuse("body bytes for a request with no body")
            case .length(let remaining):
                guard bytes.readableBytes <= remaining else { return refuse("more body bytes than its Content-Length") }
                framing = remaining == bytes.readableBytes ? .none : .length(remaining: remaining - bytes.readableBytes)
                return .success(bytes)
            case .chunked:
                // An empty chunk would end the body.
                guard bytes.readableBytes > 0 else { return .success(nil) }
                return .success(ByteBuffer.chunk(of: &bytes, allocator: allocator))
            }
        case .end(let trailers):
            switch framing {
            case .failed:
                return refuse("the request was refused")
            case .length:
                return refuse("a request ended before its Content-Length")
            case .chunked:
                framing = .none
                return .success(ByteBuffer.lastChunk(trailers: trailers, allocator: allocator))
            case .none:
                return .success(nil)
            }
        }
    }

    private mutating func refuse(_ reason: String) -> Result<ByteBuffer?, RelayedRequestEncoder.UnframeableRequest> {
        framing = .failed
        return .failure(.init(description: reason))
    }

    /// A request head as it goes upstream. Most go as they came, without a copy; edited: `close` taken out of
    /// Connection (`withoutCloseOption`), and a chunked request's Transfer-Encoding as one field saying exactly
    /// `chunked` (an origin that compares case, or reads only one of two fields, cannot take the body for
    /// anything else).
    static func head(_ head: HTTP1Head, withoutCloseOption: Bool, chunked: Bool, allocator: ByteBufferAllocator) -> ByteBuffer {
        var edits = false
        for index in head.fields.indices {
            switch head.fieldNameLength(index) {
            case 10 where withoutCloseOption && head.nameIs(index, "connection"):
                edits = true
            case 17 where head.nameIs(index, "transfer-encoding"):
                if !chunked || !head.withValue(index, { $0.elementsEqual("chunked".utf8) }) { edits = true }
            default:
                break
            }
        }
        guard edits else { return head.bytes }
        var wroteCodings = false
        return head.rewritten(allocator: allocator) { index in
            switch head.fieldNameLength(index) {
            case 10 where withoutCloseOption && head.nameIs(index, "connection"):
                var kept: [String] = []
                head.forEachElement(ofField: index) { option in
                    if !HTTP1Head.equalsLowercase(option, "close") { kept.append(String(decoding: option, as: UTF8.self)) }
                }
                return kept.isEmpty ? .drop : .value(kept.joined(separator: ", "))
            case 17 where head.nameIs(index, "transfer-encoding"):
                // One field, where the first that names a coding was.
                guard chunked, !wroteCodings else { return .drop }
                var named = false
                head.forEachElement(ofField: index) { _ in named = true }
                guard named else { return .drop }
                wroteCodings = true
                return .value("chunked")
            default:
                return .keep
            }
        }
    }
}

extension RelayedRequestWriter.Framing {
    var isChunked: Bool {
        if case .chunked = self { return true }
        return false
    }
}

/// Writes inspected responses to the client as the upstream framed them: each head's bytes as they came (the
/// codec checked them), edited only to announce a close the client asked for; chunked bodies re-chunked, no body
/// at all for a response to HEAD or CONNECT, 1xx, 204 or 304.
struct RelayedResponseWriter {
    enum Output {
        case bytes(ByteBuffer)
        /// Nothing is sent: a body the response may not have, or an empty chunk (which would end the body).
        case nothing
    }

    /// The method of the request the next response answers; set as each request is taken on.
    var requestMethod: String?
    private var framing = HTTP1BodyFraming.none
    /// The response being written is final (not a 1xx before it): its end ends the exchange.
    private var final = false

    mutating func serialize(_ part: RelayedResponsePart, allocator: ByteBufferAllocator) -> Output {
        switch part {
        case .head(let head, let announcingClose):
            if let decoded = head.bodyFraming {
                framing = decoded
            } else {
                let headLike = requestMethod == "HEAD" || requestMethod == "CONNECT"
                framing = (try? HTTP1BodyFraming.response(head, requestMethodIsHEAD: headLike).get()) ?? .untilClose
            }
            final = head.status >= 200 || head.status == 101
            return .bytes(announcingClose ? Self.announcingClose(head, allocator: allocator) : head.bytes)
        case .body(var bytes):
            switch framing {
            case .none:
                return .nothing
            case .length, .untilClose:
                return .bytes(bytes)
            case .chunked:
                guard bytes.readableBytes > 0 else { return .nothing }
                return .bytes(ByteBuffer.chunk(of: &bytes, allocator: allocator))
            }
        case .end(let trailers):
            let wasChunked = framing == .chunked
            framing = .none
            if final { requestMethod = nil }
            // Written even when empty: its write's promise is what a close after this response waits for.
            return .bytes(wasChunked ? ByteBuffer.lastChunk(trailers: trailers, allocator: allocator) : allocator.buffer(capacity: 0))
        }
    }

    /// A response head saying that the connection closes after it: its Connection options but `keep-alive` and
    /// `close`, then `close`, in one Connection field at the end; no Keep-Alive field.
    static func announcingClose(_ head: HTTP1Head, allocator: ByteBufferAllocator) -> ByteBuffer {
        var options: [String] = []
        return head.rewritten(allocator: allocator, appending: { options.append("close"); return [("Connection", options.joined(separator: ", "))] }) { index in
            switch head.fieldNameLength(index) {
            case 10 where head.nameIs(index, "connection"):
                head.forEachElement(ofField: index) { option in
                    if !HTTP1Head.equalsLowercase(option, "keep-alive") && !HTTP1Head.equalsLowercase(option, "close") {
                        options.append(String(decoding: option, as: UTF8.self))
                    }
                }
                return .drop
            case 10 where head.nameIs(index, "keep-alive"):
                return .drop
            default:
                return .keep
            }
        }
    }
}

extension HTTP1Head {
    enum FieldEdit {
        case keep
        case drop
        case value(String)
    }

    /// This head with each field line kept as it came, dropped, or given a new value (its name as it came), then
    /// the fields `appending` returns (called after every field was seen), then the empty line.
    func rewritten(
        allocator: ByteBufferAllocator, appending: () -> [(String, String)] = { [] }, _ edit: (Int) -> FieldEdit
    ) -> ByteBuffer {
        var out = allocator.buffer(capacity: bytes.readableBytes + 64)
        var startLine = bytes.getSlice(at: 0, length: Int(fieldsStart))!
        out.writeBuffer(&startLine)
        var lineStart = Int(fieldsStart)
        for index in fields.indices {
            let field = fields[index]
            switch edit(index) {
            case .keep:
                var line = bytes.getSlice(at: lineStart, length: Int(field.lineEnd) - lineStart)!
                out.writeBuffer(&line)
            case .drop:
                break
            case .value(let value):
                out.writeHTTPField(name: name(index), value: value)
            }
            lineStart = Int(field.lineEnd)
        }
        for (name, value) in appending() { out.writeHTTPField(name: name, value: value) }
        out.writeStaticString("\r\n")
        return out
    }
}

extension ByteBuffer {
    /// The end of a chunked body: the last chunk, then the trailer fields as they came (with the empty line that
    /// ends them), or just the empty line.
    static func lastChunk(trailers: HTTP1Head?, allocator: ByteBufferAllocator) -> ByteBuffer {
        guard var trailers = trailers?.bytes else {
            var buffer = allocator.buffer(capacity: 5)
            buffer.writeStaticString("0\r\n\r\n")
            return buffer
        }
        var buffer = allocator.buffer(capacity: 3 + trailers.readableBytes)
        buffer.writeStaticString("0\r\n")
        buffer.writeBuffer(&trailers)
        return buffer
    }
}

/// Why bytes are not an HTTP/1.1 message the proxy will pass on. Each case is one rule of RFC 9112 (or a limit);
/// the description is what a 400's text and the report say after "malformed request: ".
public enum HTTP1ParseError: Error, Sendable, Hashable, CustomStringConvertible {
    case invalidMethod
    case invalidTarget
    case invalidVersion
    case invalidStatus
    /// A 101 to a request that asked for no upgrade (RFC 9110 §15.2.2): what follows could be anything.
    case unrequestedSwitch
    case invalidFieldName
    case invalidFieldValue
    /// A field line that starts with whitespace: the obsolete line folding RFC 9112 §5.2 lets a server refuse.
    case obsoleteLineFolding
    /// A line that does not end in CRLF (a bare LF), or a CR not followed by LF.
    case invalidLineEnding
    case invalidContentLength
    /// Both Content-Length and Transfer-Encoding, more than one Content-Length, or a Transfer-Encoding whose last
    /// coding is not `chunked` in a request.
    case ambiguousFraming
    case invalidChunkSize
    case chunkSizeOverflow
    case invalidChunkExtension
    /// Chunk data not followed by CRLF.
    case invalidChunkEnd
    /// A trailer field that frames, routes or manages the connection (Content-Length, Connection, Host…).
    case forbiddenTrailer
    /// The stream ended inside a message (a head, or a body framed by length or chunks).
    case incompleteMessage
    case startLineTooLong(limit: Int)
    case headerBlockTooLarge(limit: Int)
    case tooManyFields(limit: Int)

    public var description: String {
        switch self {
        case .invalidMethod: "invalid method"
        case .invalidTarget: "invalid request target"
        case .invalidVersion: "invalid HTTP version"
        case .invalidStatus: "invalid status line"
        case .unrequestedSwitch: "101 Switching Protocols, which the request did not ask for"
        case .invalidFieldName: "invalid header field name"
        case .invalidFieldValue: "invalid header field value"
        case .obsoleteLineFolding: "obsolete line folding"
        case .invalidLineEnding: "a line not ended by CRLF"
        case .invalidContentLength: "an invalid Content-Length"
        case .ambiguousFraming: "ambiguous message framing"
        case .invalidChunkSize: "invalid chunk size"
        case .chunkSizeOverflow: "chunk size too large"
        case .invalidChunkExtension: "invalid chunk extension"
        case .invalidChunkEnd: "chunk data not followed by CRLF"
        case .forbiddenTrailer: "a framing or connection field among the trailers"
        case .incompleteMessage: "the connection ended inside a message"
        case .startLineTooLong(let limit): "start line longer than \(limit) bytes"
        case .headerBlockTooLarge(let limit): "header block larger than \(limit) bytes"
        case .tooManyFields(let limit): "more than \(limit) header fields"
        }
    }
}

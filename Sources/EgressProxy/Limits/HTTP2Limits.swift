/// What one inspected HTTP/2 connection may hold: open streams, a header block's size, and the bytes buffered
/// in the proxy. Each side may have `streamWindow` bytes in flight per stream toward the proxy (its HTTP/2
/// flow-control window), and the proxy reads a stream only while the other side can take what it reads. Per
/// stream and direction that is a window waiting to be read and up to a window waiting to be written; the frames
/// are slices of the buffers they were decrypted into, which they keep alive, so the memory they hold is up to
/// about twice their bytes. Measured with every stream of a connection stalled (docs/performance.md): about 5.9 ×
/// streams × window. The window is `bufferBytes` / (8 × streams), so that worst case stays under `bufferBytes`.
struct HTTP2Limits: Sendable, Hashable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS toward the client; a client opening more breaks the protocol and gets
    /// GOAWAY (PROTOCOL_ERROR).
    var maxConcurrentStreams: Int = 100
    /// SETTINGS_MAX_HEADER_LIST_SIZE toward both sides (`KAIZEN_MAX_HEADER_BYTES`).
    var maxHeaderListSize: Int = 64 * 1024
    /// The bytes one connection may buffer in all.
    var bufferBytes: Int = 64 << 20

    static let minimumStreamWindow = 16 * 1024

    /// The flow-control window each stream is given (SETTINGS_INITIAL_WINDOW_SIZE).
    var streamWindow: Int { min(bufferBytes / (8 * maxConcurrentStreams), Int(Int32.max)) }
}

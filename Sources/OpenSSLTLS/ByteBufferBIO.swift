internal import CSSL
import NIOCore

/// The BIO an `OpenSSLConnection` reads ciphertext from and writes ciphertext to: two `ByteBuffer`s instead of
/// OpenSSL's memory BIO, so bytes from the network go to OpenSSL without a copy into a BIO buffer, and bytes
/// for the network come out as a `ByteBuffer` without a copy out of one (after swift-nio-ssl's ByteBufferBIO).
///
/// Owned by its connection, which outlives the `BIO*` (freed by `SSL_free` in the connection's deinit); the
/// `BIO*` holds an unretained pointer back to this object.
final class ByteBufferBIO {
    /// Bytes from the network OpenSSL has not read yet, oldest first (kept as they came: no copying).
    var inbound = CircularBuffer<ByteBuffer>(initialCapacity: 4)
    /// Bytes OpenSSL wrote for the network, not yet taken.
    var outbound: ByteBuffer
    /// The size of the last batch taken: the next buffer starts that big, so bulk transfers do not regrow it.
    private var lastTaken = 4096
    let bio: OpaquePointer

    init() throws(OpenSSLError) {
        guard let method = Self.method, let bio = BIO_new(method) else {
            throw OpenSSLError.drain(operation: "creating the connection's buffers")
        }
        self.bio = bio
        self.outbound = ByteBufferAllocator().buffer(capacity: 0)
        BIO_set_data(bio, Unmanaged.passUnretained(self).toOpaque())
        BIO_set_init(bio, 1)
    }

    func append(_ bytes: ByteBuffer) {
        guard bytes.readableBytes > 0 else { return }
        inbound.append(bytes)
    }

    var inboundBytes: Int { inbound.reduce(0) { $0 + $1.readableBytes } }

    /// Copies up to `length` bytes into `out`; 0 when there is nothing.
    func read(into out: UnsafeMutableRawPointer, length: Int) -> Int {
        var copied = 0
        while copied < length, !inbound.isEmpty {
            var first = inbound.removeFirst()
            let count = min(length - copied, first.readableBytes)
            first.withUnsafeReadableBytes { raw in
                (out + copied).copyMemory(from: raw.baseAddress!, byteCount: count)
            }
            first.moveReaderIndex(forwardBy: count)
            copied += count
            if first.readableBytes > 0 { inbound.prepend(first) }
        }
        return copied
    }

    /// What OpenSSL has written since the last call, or nil.
    func takeOutbound(allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard outbound.readableBytes > 0 else { return nil }
        let taken = outbound
        lastTaken = min(max(taken.readableBytes, 1024), 256 * 1024)
        outbound = allocator.buffer(capacity: lastTaken)
        return taken
    }

    /// One method for every connection, made once and never changed (OpenSSL only reads it afterwards).
    private nonisolated(unsafe) static let method: OpaquePointer? = {
        guard let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "kaizen ByteBuffer BIO") else {
            return nil
        }
        BIO_meth_set_write(method, bioWrite)
        BIO_meth_set_read(method, bioRead)
        BIO_meth_set_ctrl(method, bioControl)
        BIO_meth_set_create(method, bioCreate)
        BIO_meth_set_destroy(method, bioDestroy)
        return method
    }()

    fileprivate static func from(_ bio: OpaquePointer?) -> ByteBufferBIO? {
        guard let bio, let data = BIO_get_data(bio) else { return nil }
        return Unmanaged<ByteBufferBIO>.fromOpaque(data).takeUnretainedValue()
    }
}

private func bioWrite(_ bio: OpaquePointer?, _ data: UnsafePointer<CChar>?, _ length: Int32) -> Int32 {
    guard let bio, let owner = ByteBufferBIO.from(bio), let data, length >= 0 else { return -1 }
    CSSL_BIO_clear_retry_flags(bio)
    owner.outbound.writeBytes(UnsafeRawBufferPointer(start: data, count: Int(length)))
    return length
}

private func bioRead(_ bio: OpaquePointer?, _ out: UnsafeMutablePointer<CChar>?, _ length: Int32) -> Int32 {
    guard let bio, let owner = ByteBufferBIO.from(bio), let out, length >= 0 else { return -1 }
    CSSL_BIO_clear_retry_flags(bio)
    let count = owner.read(into: UnsafeMutableRawPointer(out), length: Int(length))
    guard count > 0 else {
        CSSL_BIO_set_retry_read(bio)  // not end of file: more may come
        return -1
    }
    return Int32(count)
}

private func bioControl(_ bio: OpaquePointer?, _ command: Int32, _ larg: Int, _ parg: UnsafeMutableRawPointer?) -> Int {
    // OpenSSL asks several times per record (flush, kTLS support, ...): the commands that need no buffer state
    // are answered without looking the owner up.
    switch command {
    case BIO_CTRL_FLUSH, BIO_CTRL_DUP, BIO_CTRL_GET_CLOSE, BIO_CTRL_SET_CLOSE:
        return 1
    case BIO_CTRL_PENDING:
        return ByteBufferBIO.from(bio)?.inboundBytes ?? 0
    case BIO_CTRL_WPENDING:
        return ByteBufferBIO.from(bio)?.outbound.readableBytes ?? 0
    default:
        return 0
    }
}

private func bioCreate(_ bio: OpaquePointer?) -> Int32 { 1 }
private func bioDestroy(_ bio: OpaquePointer?) -> Int32 { 1 }

import NIOCore
import NIOHTTP1

/// HTTP/1.1 as it goes on the wire, for the relayed request and response encoders.
extension ByteBuffer {
    /// Writes `name: value` and CRLF as one write: one capacity check and one index move instead of four of
    /// each (a relayed head has a dozen fields or so, and this was a third of the cost of relaying it).
    mutating func writeHTTPField(name: String, value: String) {
        var name = name
        var value = value
        name.withUTF8 { name in
            value.withUTF8 { value in
                let count = name.count + value.count + 4
                writeWithUnsafeMutableBytes(minimumWritableBytes: count) { out in
                    UnsafeMutableRawBufferPointer(rebasing: out[..<name.count]).copyMemory(from: UnsafeRawBufferPointer(name))
                    out[name.count] = UInt8(ascii: ":")
                    out[name.count + 1] = UInt8(ascii: " ")
                    let valueStart = name.count + 2
                    UnsafeMutableRawBufferPointer(rebasing: out[valueStart..<valueStart + value.count])
                        .copyMemory(from: UnsafeRawBufferPointer(value))
                    out[count - 2] = UInt8(ascii: "\r")
                    out[count - 1] = UInt8(ascii: "\n")
                    return count
                }
            }
        }
    }

    /// `bytes` (not empty: an empty chunk ends a body) as one chunk of a chunked body.
    static func chunk(of bytes: inout ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        var chunk = allocator.buffer(capacity: bytes.readableBytes + 16)
        chunk.writeString(String(bytes.readableBytes, radix: 16))
        chunk.writeStaticString("\r\n")
        chunk.writeBuffer(&bytes)
        chunk.writeStaticString("\r\n")
        return chunk
    }

    /// The end of a chunked body: the last chunk, the trailer fields, the empty line.
    mutating func writeLastChunk(trailers: HTTPHeaders?) {
        writeStaticString("0\r\n")
        for (name, value) in trailers ?? [:] { writeHTTPField(name: name, value: value) }
        writeStaticString("\r\n")
    }
}

/// A bounds-checked reader over a byte array; every read returns `nil` instead of trapping.
struct ByteReader {
    private let bytes: [UInt8]
    private var index: Int
    private let end: Int

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
        self.index = 0
        self.end = bytes.count
    }

    private init(bytes: [UInt8], index: Int, end: Int) {
        self.bytes = bytes
        self.index = index
        self.end = end
    }

    var isAtEnd: Bool { index >= end }

    mutating func readUInt8() -> UInt8? {
        guard index < end else { return nil }
        defer { index += 1 }
        return bytes[index]
    }

    mutating func readUInt16() -> UInt16? {
        guard end - index >= 2 else { return nil }
        defer { index += 2 }
        return UInt16(bytes[index]) << 8 | UInt16(bytes[index + 1])
    }

    mutating func skip(_ count: Int) -> Bool {
        guard count >= 0, end - index >= count else { return false }
        index += count
        return true
    }

    /// A copy of the next `count` bytes, indexed from zero.
    mutating func readBytes(_ count: Int) -> [UInt8]? {
        guard count >= 0, end - index >= count else { return nil }
        defer { index += count }
        return Array(bytes[index..<(index + count)])
    }

    mutating func readSlice(_ count: Int) -> ByteReader? {
        guard count >= 0, end - index >= count else { return nil }
        defer { index += count }
        return ByteReader(bytes: bytes, index: index, end: index + count)
    }
}

extension StringProtocol {
    /// Whether the two are equal ignoring ASCII case only, as HTTP compares field names and codings (a Unicode
    /// case mapping would take the KELVIN SIGN for a k). Byte by byte in place: a zip over the UTF-8 views cost
    /// about 120 instructions per byte, and every relayed head compares each of its field names this way.
    func equalsIgnoringASCIICase(_ other: some StringProtocol) -> Bool {
        let equal = utf8.withContiguousStorageIfAvailable { bytes in
            other.utf8.withContiguousStorageIfAvailable { otherBytes in Self.equalIgnoringASCIICase(bytes, otherBytes) }
        }
        if let equal, let equal { return equal }
        return Self.equalIgnoringASCIICase(Array(utf8), Array(other.utf8))
    }

    private static func equalIgnoringASCIICase(
        _ bytes: some RandomAccessCollection<UInt8>, _ other: some RandomAccessCollection<UInt8>
    ) -> Bool {
        guard bytes.count == other.count else { return false }
        var index = bytes.startIndex
        for b in other {
            let a = bytes[index]
            guard a == b || (a | 0x20 == b | 0x20 && (a | 0x20) >= UInt8(ascii: "a") && (a | 0x20) <= UInt8(ascii: "z")) else {
                return false
            }
            bytes.formIndex(after: &index)
        }
        return true
    }
}

extension StringProtocol {
    /// Without the spaces and tabs at either end (optional whitespace around a field value, RFC 9110 §5.5).
    func trimmingASCIIWhitespace() -> SubSequence {
        let isWhitespace = { (c: Character) in c == " " || c == "\t" }
        guard let first = firstIndex(where: { !isWhitespace($0) }) else { return self[endIndex...] }
        let last = lastIndex(where: { !isWhitespace($0) })!
        return self[first...last]
    }
}

extension StringProtocol {
    /// Whether this is `lowercase` (lowercase ASCII) ignoring ASCII case only, as HTTP compares field names and
    /// codings (a Unicode case mapping would take the KELVIN SIGN for a k).
    func equalsIgnoringASCIICase(_ lowercase: StaticString) -> Bool {
        let expected = UnsafeBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount)
        guard utf8.count == expected.count else { return false }
        return zip(utf8, expected).allSatisfy { byte, lower in
            byte == lower || (lower >= UInt8(ascii: "a") && lower <= UInt8(ascii: "z") && byte == lower ^ 0x20)
        }
    }

    /// Whether the two are equal ignoring ASCII case only (names that come from a message, such as the tokens
    /// of a Connection field).
    func equalsIgnoringASCIICase(_ other: some StringProtocol) -> Bool {
        guard utf8.count == other.utf8.count else { return false }
        return zip(utf8, other.utf8).allSatisfy { a, b in
            a == b || (a | 0x20 == b | 0x20 && (a | 0x20) >= UInt8(ascii: "a") && (a | 0x20) <= UInt8(ascii: "z"))
        }
    }
}

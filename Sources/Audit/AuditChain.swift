import OpenSSLTLS

/// The audit log's hash chain: every line starts with its sequence number and the SHA-256 of the line before it.
///
/// `{"seq":42,"prev_sha256":"9f86d0…","schema_version":"1","agent":"egress-agent","action":{…},"verdict":{…}}`
///
/// A line's hash covers its bytes without the final newline. The first line of a log has `seq` 1 and 64 zeros
/// as `prev_sha256`. The two fields are always first and always spelled exactly like this, so the verifier
/// reads them without a JSON parser and can say precisely which line was edited, deleted, moved or cut short.
public struct AuditChain: Sendable, Hashable {
    /// The sequence number the next line gets.
    public private(set) var nextSequence: UInt64
    /// SHA-256 of the last line written (zeros before the first).
    public private(set) var previousHash: [UInt8]

    public static let genesisHash = [UInt8](repeating: 0, count: 32)

    /// A new log: the next line is seq 1.
    public init() {
        self.nextSequence = 1
        self.previousHash = Self.genesisHash
    }

    /// Continues after a line already written: `lastSequence` and that line's hash.
    public init(lastSequence: UInt64, lastLineHash: [UInt8]) {
        self.nextSequence = lastSequence + 1
        self.previousHash = lastLineHash
    }

    /// Appends `record` (one JSON object, no newline) to `output` as the next chained line, newline included.
    public mutating func append(record: some Collection<UInt8>, to output: inout [UInt8]) {
        precondition(record.first == UInt8(ascii: "{"), "an audit record is a JSON object")
        let start = output.count
        output.append(contentsOf: AuditLinePrefix.seqKey)
        appendDecimal(nextSequence, to: &output)
        output.append(contentsOf: AuditLinePrefix.prevKey)
        appendHex(previousHash, to: &output)
        output.append(UInt8(ascii: "\""))
        if record.count > 2 {  // `{}` has no fields to follow the two chain fields
            output.append(UInt8(ascii: ","))
        }
        output.append(contentsOf: record.dropFirst())
        previousHash = output.withUnsafeBytes { OpenSSLDigest.sha256(UnsafeRawBufferPointer(rebasing: $0[start...])) }
        output.append(UInt8(ascii: "\n"))
        nextSequence += 1
    }
}

/// The two chain fields at the start of an audit line.
public struct AuditLinePrefix: Sendable, Hashable {
    public var sequence: UInt64
    /// The previous line's SHA-256, 32 bytes.
    public var previousHash: [UInt8]

    static let seqKey = Array(#"{"seq":"#.utf8)
    static let prevKey = Array(#","prev_sha256":""#.utf8)

    /// Reads the chain fields of `line` (without its newline), or `nil` when the line does not start with them
    /// exactly as the writer writes them.
    public static func parse(_ line: some Collection<UInt8>) -> AuditLinePrefix? {
        var rest = line[...]
        guard rest.starts(with: seqKey) else { return nil }
        rest = rest.dropFirst(seqKey.count)
        var sequence: UInt64 = 0
        var digits = 0
        while let byte = rest.first, byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") {
            guard digits < 19, !(digits == 1 && sequence == 0) else { return nil }  // no leading zeros, no overflow
            sequence = sequence * 10 + UInt64(byte - UInt8(ascii: "0"))
            digits += 1
            rest = rest.dropFirst()
        }
        guard digits > 0, rest.starts(with: prevKey) else { return nil }
        rest = rest.dropFirst(prevKey.count)
        guard rest.count >= 65 else { return nil }
        guard let hash = parseHex(rest.prefix(64)) else { return nil }
        rest = rest.dropFirst(64)
        guard rest.first == UInt8(ascii: "\"") else { return nil }
        rest = rest.dropFirst()
        guard rest.first == UInt8(ascii: ",") || rest.first == UInt8(ascii: "}") else { return nil }
        return AuditLinePrefix(sequence: sequence, previousHash: hash)
    }
}

/// Lowercase hex, as written in `prev_sha256`.
public func hexString(_ bytes: [UInt8]) -> String {
    var out: [UInt8] = []
    appendHex(bytes, to: &out)
    return String(decoding: out, as: UTF8.self)
}

private let hexDigits = Array("0123456789abcdef".utf8)

func appendHex(_ bytes: [UInt8], to output: inout [UInt8]) {
    for byte in bytes {
        output.append(hexDigits[Int(byte >> 4)])
        output.append(hexDigits[Int(byte & 0x0f)])
    }
}

/// Lowercase hex only, so each hash has exactly one spelling.
func parseHex(_ text: some Collection<UInt8>) -> [UInt8]? {
    guard text.count % 2 == 0 else { return nil }
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        default: nil
        }
    }
    var out: [UInt8] = []
    out.reserveCapacity(text.count / 2)
    var iterator = text.makeIterator()
    while let high = iterator.next(), let low = iterator.next() {
        guard let h = nibble(high), let l = nibble(low) else { return nil }
        out.append(h << 4 | l)
    }
    return out
}

func appendDecimal(_ value: UInt64, to output: inout [UInt8]) {
    if value == 0 {
        output.append(UInt8(ascii: "0"))
        return
    }
    var digits: [UInt8] = []
    var rest = value
    while rest > 0 {
        digits.append(UInt8(ascii: "0") + UInt8(rest % 10))
        rest /= 10
    }
    output.append(contentsOf: digits.reversed())
}

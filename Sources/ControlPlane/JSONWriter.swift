/// Writes JSON with keys in the order they are written, so every record reads the same way
/// (`schema_version`, `agent`, `action`, `verdict`) and the same value always gives the same bytes.
///
/// Strings are escaped per RFC 8259, plus U+2028 and U+2029 (which break JavaScript line parsing), DEL, and
/// U+FEFF (which some readers drop from the start of a string), so a hostile host name or SNI can never split or
/// break a log line, and every reader gets back the value the proxy saw.
public struct JSONWriter {
    public private(set) var bytes: [UInt8]
    private var needsComma: [Bool] = []

    public init() {
        bytes = []
        bytes.reserveCapacity(512)
    }

    /// Continues after `bytes` (several records into one buffer).
    public init(appendingTo bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// The bytes written, leaving the writer empty.
    public mutating func take() -> [UInt8] {
        defer { bytes = [] }
        return bytes
    }

    public mutating func beginObject() {
        valuePrefix()
        bytes.append(UInt8(ascii: "{"))
        needsComma.append(false)
    }

    public mutating func endObject() {
        bytes.append(UInt8(ascii: "}"))
        needsComma.removeLast()
    }

    public mutating func beginArray() {
        valuePrefix()
        bytes.append(UInt8(ascii: "["))
        needsComma.append(false)
    }

    public mutating func endArray() {
        bytes.append(UInt8(ascii: "]"))
        needsComma.removeLast()
    }

    /// Writes `"key":`; the value written next belongs to it.
    public mutating func key(_ key: String) {
        separator()
        appendString(key)
        bytes.append(UInt8(ascii: ":"))
        afterKey = true
    }

    public mutating func string(_ value: String) {
        valuePrefix()
        appendString(value)
    }

    public mutating func int(_ value: Int) {
        valuePrefix()
        appendDecimal(value.magnitude, negative: value < 0)
    }

    public mutating func int(_ value: UInt64) {
        valuePrefix()
        appendDecimal(UInt(value), negative: false)
    }

    public mutating func bool(_ value: Bool) {
        valuePrefix()
        bytes.append(contentsOf: (value ? "true" : "false").utf8)
    }

    public mutating func null() {
        valuePrefix()
        bytes.append(contentsOf: "null".utf8)
    }

    // Convenience for object members.
    public mutating func field(_ name: String, _ value: String) {
        key(name)
        string(value)
    }

    public mutating func field(_ name: String, _ value: String?) {
        key(name)
        if let value { string(value) } else { null() }
    }

    public mutating func field(_ name: String, _ value: Int) {
        key(name)
        int(value)
    }

    public mutating func field(_ name: String, _ value: UInt64) {
        key(name)
        int(value)
    }

    public mutating func field(_ name: String, _ value: Bool) {
        key(name)
        bool(value)
    }

    public mutating func field(_ name: String, _ values: [String]) {
        key(name)
        beginArray()
        for value in values { string(value) }
        endArray()
    }

    /// Set between a key and its value: the value needs no separator.
    private var afterKey = false

    private mutating func valuePrefix() {
        if afterKey {
            afterKey = false
        } else {
            separator()
        }
    }

    /// A comma before every member or element but the first of its container.
    private mutating func separator() {
        guard !needsComma.isEmpty else { return }
        if needsComma[needsComma.count - 1] {
            bytes.append(UInt8(ascii: ","))
        } else {
            needsComma[needsComma.count - 1] = true
        }
    }

    private mutating func appendDecimal(_ magnitude: UInt, negative: Bool) {
        if negative { bytes.append(UInt8(ascii: "-")) }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var rest = magnitude
        withUnsafeMutableBytes(of: &digits) { buffer in
            repeat {
                buffer[19 - count] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
                count += 1
            } while rest > 0
            bytes.append(contentsOf: buffer[(20 - count)...])
        }
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    private mutating func appendString(_ value: String) {
        bytes.append(UInt8(ascii: "\""))
        // Fast path: nothing to escape (the usual host names, ids and timestamps) is copied in one go.
        // Anything outside printable ASCII (controls, DEL, and every non-ASCII byte, among them the lead bytes of
        // U+2028, U+2029 and U+FEFF), a quote or a backslash takes the slow path: one subtraction and two
        // comparisons per byte.
        let copied: Bool? = value.utf8.withContiguousStorageIfAvailable { utf8 in
            guard !Self.mayNeedEscaping(UnsafeRawBufferPointer(utf8)) else { return false }
            bytes.append(contentsOf: utf8)
            return true
        }
        if copied == true {
            bytes.append(UInt8(ascii: "\""))
            return
        }
        var utf8 = value.utf8.makeIterator()
        // A lead byte 0xE2 or 0xEF and what follows, while checking for U+2028/U+2029 (E2 80 A8/A9) and U+FEFF
        // (EF BB BF).
        var pending: [UInt8] = []
        while let byte = utf8.next() {
            if !pending.isEmpty {
                pending.append(byte)
                let second: UInt8 = pending[0] == 0xE2 ? 0x80 : 0xBB
                if pending.count == 2 && pending[1] != second {
                    bytes.append(contentsOf: pending)
                    pending.removeAll(keepingCapacity: true)
                } else if pending.count == 3 {
                    if pending[0] == 0xE2 && (pending[2] == 0xA8 || pending[2] == 0xA9) {
                        appendEscape(pending[2] == 0xA8 ? 0x2028 : 0x2029)
                    } else if pending[0] == 0xEF && pending[2] == 0xBF {
                        appendEscape(0xFEFF)
                    } else {
                        bytes.append(contentsOf: pending)
                    }
                    pending.removeAll(keepingCapacity: true)
                }
                continue
            }
            switch byte {
            case 0x22: bytes.append(contentsOf: [0x5c, 0x22])  // \"
            case 0x5c: bytes.append(contentsOf: [0x5c, 0x5c])  // \\
            case 0x0a: bytes.append(contentsOf: [0x5c, UInt8(ascii: "n")])
            case 0x0d: bytes.append(contentsOf: [0x5c, UInt8(ascii: "r")])
            case 0x09: bytes.append(contentsOf: [0x5c, UInt8(ascii: "t")])
            case 0x00..<0x20, 0x7f: appendEscape(UInt32(byte))
            case 0xE2, 0xEF: pending.append(byte)  // may start U+2028, U+2029 or U+FEFF
            default: bytes.append(byte)
            }
        }
        bytes.append(contentsOf: pending)
        bytes.append(UInt8(ascii: "\""))
    }

    /// Whether any byte is outside printable ASCII (a control, DEL, any byte of a non-ASCII character), a quote or
    /// a backslash. Eight bytes at a time: a byte-by-byte loop cost 8 instructions per byte, and an action is
    /// mostly strings.
    static func mayNeedEscaping(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highBits: UInt64 = 0x8080_8080_8080_8080
        var offset = 0
        while offset + 8 <= bytes.count {
            let word = bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            // A byte below 0x20: (word - 0x20 in each byte) sets its high bit where it was clear. A byte equal
            // to q: zero after XOR with q in each byte, found the same way. Exact for "any such byte".
            let below20 = (word &- 0x20 &* ones) & ~word
            let quote = word ^ (0x22 &* ones)
            let backslash = word ^ (0x5c &* ones)
            let delete = word ^ (0x7f &* ones)
            let zeroes = ((quote &- ones) & ~quote) | ((backslash &- ones) & ~backslash) | ((delete &- ones) & ~delete)
            if (below20 | zeroes | word) & highBits != 0 { return true }
            offset += 8
        }
        while offset < bytes.count {
            let byte = bytes[offset]
            if byte &- 0x20 > 0x5e || byte == 0x22 || byte == 0x5c { return true }
            offset += 1
        }
        return false
    }

    private mutating func appendEscape(_ value: UInt32) {
        let hex = Self.hexDigits
        bytes.append(contentsOf: [
            0x5c, UInt8(ascii: "u"), hex[Int((value >> 12) & 0xf)], hex[Int((value >> 8) & 0xf)],
            hex[Int((value >> 4) & 0xf)], hex[Int(value & 0xf)],
        ])
    }
}

/// Writes JSON with keys in the order they are written, so every record reads the same way
/// (`schema_version`, `agent`, `action`, `verdict`) and the same value always gives the same bytes.
///
/// Strings are escaped per RFC 8259, plus U+2028 and U+2029 (which break JavaScript line parsing), DEL, and
/// U+FEFF (which some readers drop from the start of a string), so a hostile host name or SNI can never split or
/// break a log line, and every reader gets back the value the proxy saw.
///
/// Keys written in the source are `JSONKey` literals, copied as they are; keys known only at run time (log
/// metadata, settings) go through `field(named:_:)` and `key(named:)`, and are escaped as any string.
public struct JSONWriter: ~Copyable {
    /// The bytes written so far: `count` of `capacity`, owned by this writer alone (it cannot be copied).
    private var storage: UnsafeMutablePointer<UInt8>
    private var count = 0
    private var capacity: Int
    /// One bit per open object or array, the innermost lowest: set once it has a member, so the next needs a comma.
    private var hasMembers: UInt64 = 0
    /// Open objects and arrays (at most 64).
    private var depth = 0

    /// A writer with room for `capacity` bytes before it first grows (an action is about 1,000).
    public init(capacity: Int = 1024) {
        self.capacity = max(capacity, 64)
        storage = .allocate(capacity: self.capacity)
    }

    deinit {
        storage.deallocate()
    }

    /// A copy of the bytes written.
    public var bytes: [UInt8] { Array(UnsafeBufferPointer(start: storage, count: count)) }

    /// The bytes written, leaving the writer empty.
    public mutating func take() -> [UInt8] {
        defer { count = 0 }
        return bytes
    }

    /// Calls `body` with the bytes written, without copying them.
    public func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
        try body(UnsafeRawBufferPointer(start: storage, count: count))
    }

    /// Ends a line (records are JSON lines); only between top-level values.
    public mutating func newline() {
        precondition(depth == 0, "JSONWriter: a newline inside an object or array")
        put(UInt8(ascii: "\n"))
    }

    public mutating func beginObject() {
        valuePrefix()
        put(UInt8(ascii: "{"))
        open()
    }

    public mutating func endObject() {
        put(UInt8(ascii: "}"))
        close()
    }

    public mutating func beginArray() {
        valuePrefix()
        put(UInt8(ascii: "["))
        open()
    }

    public mutating func endArray() {
        put(UInt8(ascii: "]"))
        close()
    }

    private mutating func open() {
        precondition(depth < 64, "JSONWriter: more than 64 nested objects or arrays")
        hasMembers <<= 1
        depth += 1
    }

    private mutating func close() {
        precondition(depth > 0, "JSONWriter: an end without its begin")
        hasMembers >>= 1
        depth -= 1
    }

    /// Writes `"key":`; the value written next belongs to it.
    public mutating func key(_ key: JSONKey) {
        separator()
        // withUTF8Buffer, not utf8Start: a one-character literal is a StaticString without a pointer.
        key.text.withUTF8Buffer { putQuoted(UnsafeRawBufferPointer($0)) }
        put(UInt8(ascii: ":"))
        afterKey = true
    }

    /// Writes `"key":` for a key known only at run time (escaped as any string).
    public mutating func key(named key: String) {
        separator()
        appendString(key)
        put(UInt8(ascii: ":"))
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
        put(value ? "true" : "false")
    }

    public mutating func null() {
        valuePrefix()
        put("null")
    }

    // Convenience for object members.
    public mutating func field(_ name: JSONKey, _ value: String) {
        key(name)
        string(value)
    }

    public mutating func field(_ name: JSONKey, _ value: String?) {
        key(name)
        if let value { string(value) } else { null() }
    }

    public mutating func field(_ name: JSONKey, _ value: Int) {
        key(name)
        int(value)
    }

    public mutating func field(_ name: JSONKey, _ value: UInt64) {
        key(name)
        int(value)
    }

    public mutating func field(_ name: JSONKey, _ value: Bool) {
        key(name)
        bool(value)
    }

    public mutating func field(_ name: JSONKey, _ values: [String]) {
        key(name)
        beginArray()
        for value in values { string(value) }
        endArray()
    }

    /// A member whose key is known only at run time (log metadata, settings).
    public mutating func field(named name: String, _ value: String) {
        key(named: name)
        string(value)
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
        guard depth > 0 else { return }
        if hasMembers & 1 != 0 {
            put(UInt8(ascii: ","))
        } else {
            hasMembers |= 1
        }
    }

    // MARK: the buffer

    /// Room for `extra` more bytes.
    @inline(__always)
    private mutating func reserve(_ extra: Int) {
        if count + extra > capacity { grow(to: count + extra) }
    }

    private mutating func grow(to needed: Int) {
        let grown = max(needed, capacity * 2)
        let moved = UnsafeMutablePointer<UInt8>.allocate(capacity: grown)
        moved.moveInitialize(from: storage, count: count)
        storage.deallocate()
        storage = moved
        capacity = grown
    }

    @inline(__always)
    private mutating func put(_ byte: UInt8) {
        reserve(1)
        storage[count] = byte
        count += 1
    }

    @inline(__always)
    private mutating func put(_ first: UInt8, _ second: UInt8) {
        reserve(2)
        storage[count] = first
        storage[count + 1] = second
        count += 2
    }

    private mutating func put(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        reserve(bytes.count)
        UnsafeMutableRawPointer(storage + count).copyMemory(from: base, byteCount: bytes.count)
        count += bytes.count
    }

    /// `"` + `bytes` + `"`, the bytes as they are (they need no escaping).
    private mutating func putQuoted(_ bytes: UnsafeRawBufferPointer) {
        reserve(bytes.count + 2)
        storage[count] = UInt8(ascii: "\"")
        if let base = bytes.baseAddress {
            UnsafeMutableRawPointer(storage + count + 1).copyMemory(from: base, byteCount: bytes.count)
        }
        storage[count + 1 + bytes.count] = UInt8(ascii: "\"")
        count += bytes.count + 2
    }

    private mutating func put(_ text: StaticString) {
        text.withUTF8Buffer { put(UnsafeRawBufferPointer($0)) }
    }

    // MARK: values

    private mutating func appendDecimal(_ magnitude: UInt, negative: Bool) {
        reserve(21)
        if negative {
            storage[count] = UInt8(ascii: "-")
            count += 1
        }
        var digits = 1
        var shorter = magnitude / 10
        while shorter > 0 {
            digits += 1
            shorter /= 10
        }
        var rest = magnitude
        for index in stride(from: count + digits - 1, through: count, by: -1) {
            storage[index] = UInt8(ascii: "0") + UInt8(rest % 10)
            rest /= 10
        }
        count += digits
    }

    private static let hexDigits: StaticString = "0123456789abcdef"

    private mutating func appendString(_ value: String) {
        // Fast path: nothing to escape (the usual host names, ids and timestamps) is copied in one go.
        // Anything outside printable ASCII (controls, DEL, and every non-ASCII byte, among them the lead bytes of
        // U+2028, U+2029 and U+FEFF), a quote or a backslash takes the slow path: one subtraction and two
        // comparisons per byte.
        let copied: Bool? = value.utf8.withContiguousStorageIfAvailable { utf8 in
            let raw = UnsafeRawBufferPointer(utf8)
            guard !Self.mayNeedEscaping(raw) else { return false }
            putQuoted(raw)
            return true
        }
        if copied == true { return }
        put(UInt8(ascii: "\""))
        var utf8 = value.utf8.makeIterator()
        // A lead byte 0xE2 or 0xEF and what follows, while checking for U+2028/U+2029 (E2 80 A8/A9) and U+FEFF
        // (EF BB BF): up to three bytes, held in `pending` (`held` of them).
        var pending: (UInt8, UInt8, UInt8) = (0, 0, 0)
        var held = 0
        while let byte = utf8.next() {
            if held > 0 {
                if held == 1 {
                    pending.1 = byte
                    held = 2
                    if byte != (pending.0 == 0xE2 ? 0x80 : 0xBB) {
                        put(pending.0, pending.1)
                        held = 0
                    }
                } else {
                    pending.2 = byte
                    if pending.0 == 0xE2 && (byte == 0xA8 || byte == 0xA9) {
                        appendEscape(byte == 0xA8 ? 0x2028 : 0x2029)
                    } else if pending.0 == 0xEF && byte == 0xBF {
                        appendEscape(0xFEFF)
                    } else {
                        put(pending.0, pending.1)
                        put(byte)
                    }
                    held = 0
                }
                continue
            }
            switch byte {
            case 0x22: put(0x5c, 0x22)  // \"
            case 0x5c: put(0x5c, 0x5c)  // \\
            case 0x0a: put(0x5c, UInt8(ascii: "n"))
            case 0x0d: put(0x5c, UInt8(ascii: "r"))
            case 0x09: put(0x5c, UInt8(ascii: "t"))
            case 0x00..<0x20, 0x7f: appendEscape(UInt32(byte))
            case 0xE2, 0xEF:  // may start U+2028, U+2029 or U+FEFF
                pending.0 = byte
                held = 1
            default: put(byte)
            }
        }
        if held >= 1 { put(pending.0) }
        if held == 2 { put(pending.1) }
        put(UInt8(ascii: "\""))
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
        let hex = Self.hexDigits.utf8Start
        reserve(6)
        storage[count] = 0x5c
        storage[count + 1] = UInt8(ascii: "u")
        storage[count + 2] = hex[Int((value >> 12) & 0xf)]
        storage[count + 3] = hex[Int((value >> 8) & 0xf)]
        storage[count + 4] = hex[Int((value >> 4) & 0xf)]
        storage[count + 5] = hex[Int(value & 0xf)]
        count += 6
    }
}

/// A key written in the source: `json.field("event_id", …)`. Only printable ASCII other than `"` and `\`, so it is
/// copied without escaping (checked when the key is made, in debug builds).
public struct JSONKey: ExpressibleByStringLiteral, Sendable {
    let text: StaticString

    public init(stringLiteral text: StaticString) {
        assert(!text.withUTF8Buffer { JSONWriter.mayNeedEscaping(UnsafeRawBufferPointer($0)) }, "JSONKey: \(text) needs escaping")
        self.text = text
    }
}

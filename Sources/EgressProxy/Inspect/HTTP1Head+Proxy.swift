import HTTP1Codec

/// What the proxy reads in an HTTP/1.1 head parsed in place, beyond its parts: Connection options and
/// keep-alive, read from the bytes without a `String` per field.
extension HTTP1Head {
    /// The options of every Connection field (RFC 9110 §7.6.1) the proxy acts on.
    struct ConnectionOptions {
        var close = false
        var keepAlive = false
        /// A framing field named as an option (its value, lowercase): it would be dropped on the way.
        var namesFramingField: String?
    }

    var connectionOptions: ConnectionOptions {
        var options = ConnectionOptions()
        for index in fields.indices where fieldNameLength(index) == 10 && nameIs(index, "connection") {
            forEachElement(ofField: index) { element in
                if Self.equalsLowercase(element, "close") {
                    options.close = true
                } else if Self.equalsLowercase(element, "keep-alive") {
                    options.keepAlive = true
                } else if Self.equalsLowercase(element, "content-length") {
                    options.namesFramingField = "content-length"
                } else if Self.equalsLowercase(element, "transfer-encoding") {
                    options.namesFramingField = "transfer-encoding"
                }
            }
        }
        return options
    }

    /// Whether the connection stays open after this message (RFC 9112 §9.3): HTTP/1.1 unless `close`, HTTP/1.0
    /// only with `keep-alive`.
    static func keepsAlive(version: (major: UInt8, minor: UInt8), _ options: ConnectionOptions) -> Bool {
        if options.close { return false }
        return version.minor >= 1 || options.keepAlive
    }

    var keepsAlive: Bool { Self.keepsAlive(version: version, connectionOptions) }

    func fieldNameLength(_ index: Int) -> UInt32 { fields[index].nameEnd - fields[index].nameStart }

    /// Calls `body` with each comma-separated element of field `index`'s value, without the whitespace around it;
    /// empty elements are skipped.
    func forEachElement(ofField index: Int, _ body: (UnsafeRawBufferPointer) -> Void) {
        withValue(index) { value in
            var start = 0
            while start < value.count {
                var end = start
                while end < value.count && value[end] != UInt8(ascii: ",") { end += 1 }
                var first = start
                var last = end
                while first < last && (value[first] == 0x20 || value[first] == 0x09) { first += 1 }
                while last > first && (value[last - 1] == 0x20 || value[last - 1] == 0x09) { last -= 1 }
                if last > first { body(UnsafeRawBufferPointer(rebasing: value[first..<last])) }
                start = end + 1
            }
        }
    }

    static func equalsLowercase(_ bytes: UnsafeRawBufferPointer, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        for i in 0..<bytes.count {
            var byte = bytes[i]
            if byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") { byte |= 0x20 }
            if byte != lowercase.utf8Start[i] { return false }
        }
        return true
    }
}

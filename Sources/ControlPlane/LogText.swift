/// Text from the network or the control plane made safe for a log line.
public enum LogText {
    /// `text` with control and non-ASCII characters escaped (`\u{…}`), so a hostile name cannot forge log lines;
    /// with `limit`, at most that many characters of it.
    public static func printable(_ text: String, limit: Int? = nil) -> String {
        let scalars = text.unicodeScalars.prefix(limit ?? Int.max)
        guard scalars.contains(where: { $0.value < 0x20 || $0.value >= 0x7f }) || limit != nil else { return text }
        var out = ""
        for scalar in scalars {
            if scalar.value < 0x20 || scalar.value >= 0x7f {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}

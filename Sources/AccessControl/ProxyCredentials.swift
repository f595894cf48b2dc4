import Foundation

/// `KAIZEN_PROXY_AUTH`: a file of `agent:token` lines. A client names its agent and proves it with
/// `Proxy-Authorization: Basic base64(agent:token)`; the agent becomes the action's `agent`, so one proxy serves
/// many agents. Tokens are compared in constant time; the file must not be readable by group or others.
public struct ProxyCredentials: Sendable {
    private let tokens: [String: [UInt8]]

    public var agents: [String] { tokens.keys.sorted() }

    public struct Problem: Error, Sendable, Hashable, CustomStringConvertible {
        public var description: String
    }

    public init(tokens: [String: String]) {
        self.tokens = tokens.mapValues { Array($0.utf8) }
    }

    /// Reads and checks the file: mode, then one `agent:token` per line (blank lines and `#` comments skipped).
    /// Problems name the line, never a token.
    public static func load(path: String) throws(Problem) -> ProxyCredentials {
        var info = stat()
        guard stat(path, &info) == 0 else {
            // Not the value: one that names no file may be an agent:token line itself.
            throw Problem(
                description: "the value names no readable file (\(String(cString: strerror(errno))); it is not shown, as it may hold a token)")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw Problem(
                description: "\(path) is readable by group or others (mode \(String(info.st_mode & 0o777, radix: 8))): chmod 600 it")
        }
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw Problem(description: "cannot read \(path) as UTF-8 text")
        }
        var tokens: [String: String] = [:]
        // By newline Characters: in Swift "\r\n" is one Character, so splitting on "\n" alone never splits a file
        // written on Windows, and its first agent would take every later line as its token.
        for (index, line) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            if line.allSatisfy({ $0 == " " || $0 == "\t" }) || line.hasPrefix("#") { continue }
            guard let colon = line.firstIndex(of: ":") else {
                throw Problem(description: "\(path) line \(index + 1) is not agent:token")
            }
            let agent = String(line[..<colon])
            let token = String(line[line.index(after: colon)...])
            guard !agent.isEmpty, agent.count <= 128,
                agent.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7f && $0 != ":" })
            else {
                throw Problem(description: "\(path) line \(index + 1): the agent name must be 1–128 printable characters without spaces")
            }
            guard token.utf8.count >= 16 else {
                throw Problem(description: "\(path) line \(index + 1): the token for \(agent) is shorter than 16 characters")
            }
            guard tokens[agent] == nil else {
                throw Problem(description: "\(path) line \(index + 1): \(agent) appears twice")
            }
            tokens[agent] = token
        }
        guard !tokens.isEmpty else { throw Problem(description: "\(path) holds no agent:token line") }
        return ProxyCredentials(tokens: tokens)
    }

    /// What a `Proxy-Authorization` value proves.
    public enum Check: Sendable, Hashable {
        /// The agent, as the file spells it.
        case agent(String)
        /// Not `Basic` with base64 of `agent:token`.
        case malformed
        /// An agent the file lists, with another token. Its name may be logged: names are not secret.
        case wrongToken(agent: String)
        /// An agent the file does not list. Its name is not kept: it could be a token sent as the user name.
        case unknownAgent

        /// Why it proves no agent, for the log and the metric's `reason` label; nil when it does.
        public var failure: String? {
            switch self {
            case .agent: nil
            case .malformed: "malformed"
            case .wrongToken: "wrong_token"
            case .unknownAgent: "unknown_agent"
            }
        }
    }

    /// What a `Proxy-Authorization` value proves. Only the Basic scheme is accepted.
    public func check(authorization value: String) -> Check {
        let parts = value.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "basic",
            let decoded = Data(base64Encoded: String(parts[1]).trimmingCharacters(in: .whitespaces)),
            let colon = decoded.firstIndex(of: UInt8(ascii: ":"))
        else { return .malformed }
        let agent = String(decoding: decoded[..<colon], as: UTF8.self)
        let token = Array(decoded[decoded.index(after: colon)...])
        // Compare against a stored token even for an unknown agent, so timing does not tell which agents exist.
        let index = tokens.index(forKey: agent)
        let expected = index.map { tokens[$0].value } ?? Self.decoy
        let matches = Self.constantTimeEquals(token, expected)
        // The agent as the file spells it (String equality is Unicode-canonical: another byte spelling matches).
        guard let index else { return .unknownAgent }
        return matches ? .agent(tokens[index].key) : .wrongToken(agent: tokens[index].key)
    }

    private static let decoy = Array(repeating: UInt8(ascii: "x"), count: 32)

    /// Equal length and bytes, in time that depends only on the lengths.
    static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(a.count == b.count ? 0 : 1)
        let count = max(a.count, b.count)
        for index in 0..<count {
            let x = index < a.count ? a[index] : 0
            let y = index < b.count ? b[index] : 0
            difference |= x ^ y
        }
        return difference == 0
    }
}

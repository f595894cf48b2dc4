@testable import AccessControl
import Foundation
import Testing

extension ProxyCredentials {
    /// The agent a value proves, or nil.
    func agent(forAuthorization value: String) -> String? {
        if case .agent(let agent) = check(authorization: value) { return agent }
        return nil
    }
}

@Suite struct ProxyCredentialsTests {
    func file(_ text: String, mode: Int = 0o600) throws -> String {
        let path = NSTemporaryDirectory() + "auth-" + UUID().uuidString
        #expect(FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode]))
        return path
    }

    func basic(_ user: String, _ password: String) -> String {
        "Basic " + Data("\(user):\(password)".utf8).base64EncodedString()
    }

    @Test func acceptsTheRightTokenOnly() throws {
        let credentials = try ProxyCredentials.load(path: try file("# agents\nplanner:planner-token-0123456789\n\nresearcher:researcher-token-abcdef\n"))
        #expect(credentials.agents == ["planner", "researcher"])
        #expect(credentials.agent(forAuthorization: basic("planner", "planner-token-0123456789")) == "planner")
        #expect(credentials.agent(forAuthorization: "basic " + Data("researcher:researcher-token-abcdef".utf8).base64EncodedString()) == "researcher")
        #expect(credentials.agent(forAuthorization: basic("planner", "researcher-token-abcdef")) == nil)
        #expect(credentials.agent(forAuthorization: basic("nobody", "planner-token-0123456789")) == nil)
        #expect(credentials.agent(forAuthorization: basic("planner", "planner-token-012345678")) == nil)
        #expect(credentials.agent(forAuthorization: "Bearer planner-token-0123456789") == nil)
        #expect(credentials.agent(forAuthorization: "Basic !!!") == nil)
        #expect(credentials.agent(forAuthorization: "Basic " + Data("no-colon".utf8).base64EncodedString()) == nil)
    }

    /// Why a value proves no agent: a known agent is named (names are not secret), an unknown one never (it could
    /// be a token sent as the user name).
    @Test func saysWhyAValueProvesNoAgent() throws {
        let credentials = try ProxyCredentials.load(path: try file("planner:planner-token-0123456789\n"))
        #expect(credentials.check(authorization: basic("planner", "planner-token-0123456789")) == .agent("planner"))
        #expect(credentials.check(authorization: basic("planner", "wrong-token-0123456789")) == .wrongToken(agent: "planner"))
        #expect(credentials.check(authorization: basic("planner-token-0123456789", "")) == .unknownAgent)
        #expect(credentials.check(authorization: "Bearer planner-token-0123456789") == .malformed)
        #expect(credentials.check(authorization: "Basic") == .malformed)
        #expect(ProxyCredentials.Check.wrongToken(agent: "planner").failure == "wrong_token")
        #expect(ProxyCredentials.Check.unknownAgent.failure == "unknown_agent")
        #expect(ProxyCredentials.Check.agent("planner").failure == nil)
    }

    /// A file written with Windows line endings holds one agent per line, as any other.
    @Test func readsCRLFLines() throws {
        let credentials = try ProxyCredentials.load(path: try file("planner:planner-token-0123456789\r\nresearcher:researcher-token-abcdef\r\n"))
        #expect(credentials.agents == ["planner", "researcher"])
        #expect(credentials.agent(forAuthorization: basic("planner", "planner-token-0123456789")) == "planner")
        #expect(credentials.agent(forAuthorization: basic("researcher", "researcher-token-abcdef")) == "researcher")
    }

    @Test func theAgentIsReportedAsTheFileSpellsIt() throws {
        // "é" precomposed in the file, decomposed by the client: String equality matches, the report must not
        // carry the client's bytes.
        let credentials = try ProxyCredentials.load(path: try file("caf\u{e9}:0123456789abcdef-token\n"))
        let agent = credentials.agent(forAuthorization: basic("cafe\u{301}", "0123456789abcdef-token"))
        #expect(agent.map { Array($0.utf8) } == Array("caf\u{e9}".utf8))
    }

    @Test func refusesUnsafeOrMalformedFiles() throws {
        #expect(throws: ProxyCredentials.Problem.self) { try ProxyCredentials.load(path: try file("a:0123456789abcdef\n", mode: 0o644)) }
        #expect(throws: ProxyCredentials.Problem.self) { try ProxyCredentials.load(path: try file("no colon here\n")) }
        #expect(throws: ProxyCredentials.Problem.self) { try ProxyCredentials.load(path: try file("a:short\n")) }
        #expect(throws: ProxyCredentials.Problem.self) { try ProxyCredentials.load(path: try file("a:0123456789abcdef\na:0123456789abcdeg\n")) }
        #expect(throws: ProxyCredentials.Problem.self) { try ProxyCredentials.load(path: try file("\n# nothing\n")) }
        #expect(throws: ProxyCredentials.Problem.self) { try ProxyCredentials.load(path: "/nonexistent/auth") }
        // A problem never quotes a token.
        do {
            _ = try ProxyCredentials.load(path: try file("agent:tok-SECRET\n"))
        } catch {
            #expect(!"\(error)".contains("SECRET"))
        }
    }

    @Test func constantTimeComparison() {
        #expect(ProxyCredentials.constantTimeEquals(Array("abc".utf8), Array("abc".utf8)))
        #expect(!ProxyCredentials.constantTimeEquals(Array("abc".utf8), Array("abd".utf8)))
        #expect(!ProxyCredentials.constantTimeEquals(Array("abc".utf8), Array("abcd".utf8)))
        #expect(!ProxyCredentials.constantTimeEquals([], Array("a".utf8)))
    }
}

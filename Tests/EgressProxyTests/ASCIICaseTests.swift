@testable import EgressProxy
import Testing

@Suite struct ASCIICaseTests {
    @Test(arguments: [
        ("content-length", true), ("Content-Length", true), ("CONTENT-LENGTH", true), ("content-lengtH", true),
        ("content-lengths", false), ("content-lengt", false), ("", false), ("content_length", false),
        // Only ASCII letters fold: '-' ^ 0x20 is '\r', '{' is not a capital '['.
        ("content\rlength", false), ("c\u{212A}ntent-length", false),
    ])
    func aFieldNameMatchesIgnoringASCIICaseOnly(name: String, matches: Bool) {
        #expect(name.equalsIgnoringASCIICase("content-length") == matches)
        #expect(Substring("x" + name).dropFirst().equalsIgnoringASCIICase("content-length") == matches)
        // Against a name that came from a message (a Connection token), either side in either case.
        let token: String = "Content-LENGTH"
        #expect(name.equalsIgnoringASCIICase(token) == matches)
        #expect(token.equalsIgnoringASCIICase(Substring(name)) == matches)
    }

    @Test func theKelvinSignIsNotAK() {
        #expect("chun\u{212A}ed".equalsIgnoringASCIICase("chunked") == false)
        #expect("CHUNKED".equalsIgnoringASCIICase("chunked"))
        #expect("[".equalsIgnoringASCIICase("{") == false)
        #expect("".equalsIgnoringASCIICase(""))
        let empty: String = ""
        #expect(empty.equalsIgnoringASCIICase(empty))
        #expect("{".equalsIgnoringASCIICase("[" as String) == false)
        #expect("ab".equalsIgnoringASCIICase("abc" as String) == false)
    }
}

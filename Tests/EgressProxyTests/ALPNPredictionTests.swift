@testable import EgressProxy
import NIOCore
import Testing

/// The ALPN answer an inspected client's handshake is made with before the upstream has chosen: a good guess saves
/// the client's side of the handshake from waiting; a wrong one makes it again (`OpenSSLTLSHandlerTests`,
/// `InspectionALPNTests`), so only the cost is at stake here.
@Suite struct ALPNPredictionTests {
    typealias Handler = InspectionStartHandler

    @Test func thePredictionFollowsWhatIsKnownFirst() {
        // No offer: no ALPN, whatever else is known.
        #expect(Handler.predictedALPNAnswer(offer: [], pooled: .some("h2"), remembered: .some("h2")) == nil)
        // A kept connection's choice is certain.
        #expect(Handler.predictedALPNAnswer(offer: ["h2", "http/1.1"], pooled: .some("http/1.1"), remembered: .some("h2")) == "http/1.1")
        #expect(Handler.predictedALPNAnswer(offer: ["h2", "http/1.1"], pooled: .some(nil), remembered: nil) == nil)
        // Then what this destination chose last time, none included.
        #expect(Handler.predictedALPNAnswer(offer: ["h2", "http/1.1"], pooled: nil, remembered: .some("http/1.1")) == "http/1.1")
        #expect(Handler.predictedALPNAnswer(offer: ["h2", "http/1.1"], pooled: nil, remembered: .some(nil)) == nil)
        // A remembered choice the offer does not contain is no guess.
        #expect(Handler.predictedALPNAnswer(offer: ["http/1.1"], pooled: nil, remembered: .some("h2")) == "http/1.1")
        // Else the first offered.
        #expect(Handler.predictedALPNAnswer(offer: ["h2", "http/1.1"], pooled: nil, remembered: nil) == "h2")
        #expect(Handler.predictedALPNAnswer(offer: ["http/1.1"], pooled: nil, remembered: nil) == "http/1.1")
    }

    @Test func choicesAreRememberedPerDestinationAndBounded() {
        let choices = UpstreamALPNChoices()
        #expect(choices.last(for: "a") == nil)
        choices.note(nil, for: "a")
        choices.note("h2", for: "b")
        #expect(choices.last(for: "a") == .some(nil))
        #expect(choices.last(for: "b") == .some("h2"))
        choices.note("http/1.1", for: "b")
        #expect(choices.last(for: "b") == .some("http/1.1"))
        // Full: a new destination clears what was kept; one already kept is updated in place.
        for index in 0..<UpstreamALPNChoices.limit - 2 { choices.note("h2", for: "d\(index)") }
        choices.note(nil, for: "a")
        #expect(choices.last(for: "b") == .some("http/1.1"))
        choices.note("h2", for: "new")
        #expect(choices.last(for: "b") == nil && choices.last(for: "new") == .some("h2"))
    }

    /// A name not seen yet is guessed from the server at its address (many names, one server); a name's own
    /// choice comes first, and an address or an offer of its own knows nothing yet.
    @Test func aNewNameIsGuessedFromTheServerAtItsAddress() throws {
        let choices = UpstreamALPNChoices()
        let address = try SocketAddress(ipAddress: "192.0.2.10", port: 443)
        let offer = ["h2", "http/1.1"]
        let server = UpstreamALPNChoices.serverKey(address, offer: offer)
        #expect(server == "@192.0.2.10 443 h2,http/1.1")
        choices.note("http/1.1", for: "a.example 443 a.example h2,http/1.1", server: server)
        #expect(choices.last(for: "b.example 443 b.example h2,http/1.1", orServer: server) == .some("http/1.1"))
        choices.note("h2", for: "c.example 443 c.example h2,http/1.1", server: nil)
        #expect(choices.last(for: "c.example 443 c.example h2,http/1.1", orServer: server) == .some("h2"))
        let other = UpstreamALPNChoices.serverKey(try SocketAddress(ipAddress: "192.0.2.11", port: 443), offer: offer)
        #expect(choices.last(for: "d.example 443 d.example h2,http/1.1", orServer: other) == nil)
        #expect(choices.last(for: "d.example 443 d.example h2", orServer: UpstreamALPNChoices.serverKey(address, offer: ["h2"])) == nil)
        #expect(UpstreamALPNChoices.serverKey(nil, offer: offer) == nil)
    }

    /// What the upstream is offered: the relayed protocols of the client's offer, in its order, each once, however
    /// often the client repeats them.
    @Test func theUpstreamOfferKeepsEachRelayedProtocolOnce() {
        let relayed = ["h2", "http/1.1"]
        #expect(Inspection.relayable(["h2", "http/1.1"], of: relayed) == ["h2", "http/1.1"])
        #expect(Inspection.relayable(Array(repeating: "h2", count: 20_000) + ["x-custom/1", "http/1.1", "h2"], of: relayed) == ["h2", "http/1.1"])
        #expect(Inspection.relayable(["http/1.1", "h2"], of: ["http/1.1"]) == ["http/1.1"])
        #expect(Inspection.relayable(["spdy/3", "x-custom/1"], of: relayed).isEmpty)
    }
}

import Foundation
import Interception
import Logging
import Telemetry
import NIOCore
import OpenSSLTLS

/// Everything inspection mode needs, built once at start-up from the customer's CA; absent without a CA, so
/// nothing is ever decrypted then.
struct Inspection: Sendable {
    let authority: OpenSSLCertificateAuthority
    let leaves: LeafCache
    let policy: InspectionPolicy
    /// Client role toward the real upstream: verifies (system store + KAIZEN_UPSTREAM_CA_FILE); each connection
    /// offers what its client offered.
    let upstreamTLS: OpenSSLContext
    /// Server role toward the agent: a leaf per connection, answered with the upstream's ALPN choice.
    let clientTLS: OpenSSLContext
    let reportQuery: Bool
    /// `KAIZEN_INSPECT_REQUIRED`: what should be inspected but cannot be is refused, not passed through.
    let inspectRequired: Bool
    /// Streams, header block size and buffered bytes of an inspected HTTP/2 connection.
    let http2Limits: HTTP2Limits
    /// Idle verified HTTP/1.1 upstream connections, for the next inspected connection of the same agent to the same
    /// destination. New with each `make`: a reload (another upstream trust, say) never reuses a connection verified
    /// before it; the old pool's connections close when their idle time is up.
    let upstreamPool: UpstreamPool
    /// What each destination's upstream chose from an ALPN offer last time: the client's handshake is made with it
    /// before the upstream has chosen again.
    let alpnChoices = UpstreamALPNChoices()
    /// What this proxy's inspected ClientHellos were like: what an early upstream handshake is made for.
    let habits = ClientHelloHabits()

    /// What an upstream handshake begun before the ClientHello is in (`EarlyUpstreamHandshake`) is made for: the
    /// CONNECT host as server name, and the offer `agent`'s clients settled on. Nil, and no early handshake, unless
    /// the ClientHello will most likely ask for exactly that and be inspected: a CONNECT to a name (a client that
    /// connects to an address may send any name), on a port TLS was inspected on, by an agent whose clients made
    /// the same offer the last times and whose last CONNECT to this destination was followed by a ClientHello
    /// naming it, to a name inspected and whose leaf can be minted (with nameConstraints: is minted already, as
    /// `mintAhead` does while the name is resolved).
    func earlyHandshakePlan(for destination: Destination, agent: String) -> (upstreamName: String, offer: [String])? {
        guard let offer = habits.settledOffer(agent: agent),
            let (leaf, upstreamName) = likelyInspection(of: destination, agent: agent),
            !authority.hasNameConstraints || leaves.isCached(leaf)
        else { return nil }
        return (upstreamName, offer)
    }

    /// The leaf and upstream name of the inspection a ClientHello will most likely ask for after a CONNECT to
    /// `destination`: one that names the CONNECT host. Nil unless that is likely (a CONNECT to a name, on a port TLS
    /// was inspected on, to a destination whose last CONNECT of `agent`'s was followed by a ClientHello naming it),
    /// the name is inspected, and a certificate can carry it.
    private func likelyInspection(
        of destination: Destination, agent: String
    ) -> (leaf: OpenSSLCertificateAuthority.LeafName, upstreamName: String)? {
        guard !destination.isIPLiteral, habits.seenTLS(onPort: destination.port),
            !habits.namesAnotherHost(agent: agent, destination: destination),
            case .inspect(let leaf, let upstreamName) = policy.decide(
                agent: agent, connectHost: destination.host, isTLS: true, serverName: destination.host,
                now: Inspection.now()),
            (try? OpenSSLCertificateAuthority.validate(leaf)) != nil
        else { return nil }
        return (leaf, upstreamName)
    }

    /// The key an upstream TLS session is kept under: resumed only by a connection to the same destination, for
    /// the same name, with the same ALPN offer.
    static func sessionKey(_ destination: Destination, upstreamName: String, offer: [String]) -> String {
        "\(destination.host) \(destination.port) \(upstreamName) \(offer.joined(separator: ","))"
    }

    /// While the name of a CONNECT that may be inspected is resolved and dialled, its connection waits: the leaf its
    /// ClientHello will most likely ask for (`likelyInspection`) is minted meanwhile, so the first connection to a
    /// name does not mint while its handshakes wait. A ClientHello that names another host, or is no ClientHello,
    /// finds the leaf cached and unused; one that asks for it finds it ready.
    func mintAhead(forConnectTo destination: Destination, agent: String, on eventLoop: any EventLoop) {
        guard let (leaf, _) = likelyInspection(of: destination, agent: agent) else { return }
        leaves.mintAhead(for: leaf, on: eventLoop)
    }

    /// The protocols inspection relays: HTTP/2, HTTP/1.1 and HTTP/1.0, or the last two alone with `KAIZEN_INSPECT_HTTP2=off`.
    /// The upstream is offered the client's own ALPN list, less what is not relayed; the client is answered with
    /// the upstream's choice.
    let alpn: [String]

    /// What the upstream is offered for a client that offered `clientOffer`: its protocols that can be relayed,
    /// in its order; `[]` (no ALPN) when it offered none. Nil when it offered only protocols that cannot be relayed
    /// (the connection then passes through untouched).
    func upstreamOffer(forClientOffer clientOffer: [String]) -> [String]? {
        guard !clientOffer.isEmpty else { return [] }
        let relayable = Self.relayable(clientOffer, of: alpn)
        return relayable.isEmpty ? nil : relayable
    }

    /// The protocols of `offer` that are in `relayed`, in the client's order, each once: an offer that repeats a
    /// protocol (the ClientHello allows 64 KiB of them) makes no longer upstream offer, nor longer keys for the
    /// session cache, the kept connections and the ALPN guesses.
    static func relayable(_ offer: [String], of relayed: [String]) -> [String] {
        var kept: [String] = []
        for name in offer where relayed.contains(name) && !kept.contains(name) { kept.append(name) }
        return kept
    }

    /// Loads and checks the CA and builds the TLS contexts; a problem is a `ConfigurationError` naming the
    /// variable. Warnings (a CA close to expiry) are logged.
    /// - Parameter previous: the inspection in force before a reload: its pinned names carry over, and so do its
    ///   minted leaves when the CA is the same certificate.
    static func make(
        _ configuration: ProxyConfiguration, logger: Logger, metrics: ProxyMetrics? = nil, previous: Inspection? = nil
    ) throws(ConfigurationError) -> Inspection? {
        guard let files = configuration.inspectionCA else { return nil }
        let now = Int64(Date().timeIntervalSince1970)
        let authority: OpenSSLCertificateAuthority
        do {
            let (loaded, warnings) = try CustomerCA.load(certificateFile: files.certificateFile, keyFile: files.keyFile, now: now)
            authority = loaded
            for warning in warnings { logger.warning("\(warning)") }
        } catch {
            throw ConfigurationError(variable: error.variable, error.message)
        }
        // HTTP/1.0 goes the HTTP/1.1 way (the same codec reads both): a client that offers only `http/1.0` (curl's
        // --http1.0) is inspected, not passed through as a protocol inspection cannot read.
        let relayed = configuration.inspectHTTP2 ? ["h2", "http/1.1", "http/1.0"] : ["http/1.1", "http/1.0"]
        let leafKey: OpenSSLPrivateKey
        let upstreamTLS: OpenSSLContext
        let clientTLS: OpenSSLContext
        do {
            leafKey = try .generateP256ForLeaves()
            var upstream = OpenSSLContext.Configuration(role: .client)
            upstream.alpn = relayed
            upstream.additionalTrustFile = configuration.upstreamCAFile
            // Never the inspection CA, whichever trust store holds it: an upstream with a leaf from it would pass as
            // verified, and be shown to the client as the real site.
            upstream.distrustedIssuers = [authority.certificate]
            for warning in Self.distrustWarnings(upstream, ca: authority.certificate) { logger.warning("\(warning)") }
            upstreamTLS = try OpenSSLContext(configuration: upstream)
            var client = OpenSSLContext.Configuration(role: .server)
            client.alpnChosenPerConnection = true
            client.certificatesChosenPerConnection = true
            clientTLS = try OpenSSLContext(configuration: client)
        } catch {
            throw ConfigurationError(
                variable: ConfigurationKey.upstreamCAFile.variable,
                "cannot set up inspection TLS: \(error): check KAIZEN_UPSTREAM_CA_FILE holds PEM certificates"
            )
        }
        let seconds = configuration.pinnedPassthrough.nanoseconds / 1_000_000_000
        logger.notice(
            "inspection on: connections are decrypted with leaves from the customer CA",
            metadata: [
                "ca": "\(authority.certificate.subjectDescription)",
                "inspect_hosts": "\(configuration.inspectHosts?.description ?? "all")",
                "passthrough_hosts": "\(configuration.passthroughHosts?.description ?? "none")",
            ]
        )
        let policy = InspectionPolicy(
            inspectHosts: configuration.inspectHosts,
            passthroughHosts: configuration.passthroughHosts,
            pinnedFor: seconds
        )
        if let previous { policy.adoptPins(from: previous.policy) }
        // The whole chain: a reload that only adds or changes an intermediate must reach the chains leaves are sent in.
        let sameCA = previous.map { $0.authority.chain.map(\.derBytes) == authority.chain.map(\.derBytes) } ?? false
        return Inspection(
            authority: authority,
            leaves: sameCA
                ? previous!.leaves
                : LeafCache(authority: authority, leafKey: leafKey, metrics: metrics) { Int64(Date().timeIntervalSince1970) },
            policy: policy,
            upstreamTLS: upstreamTLS,
            clientTLS: clientTLS,
            reportQuery: configuration.reportQuery,
            inspectRequired: configuration.inspectRequired,
            http2Limits: configuration.http2Limits,
            upstreamPool: UpstreamPool(idleTimeout: configuration.upstreamIdleTimeout, metrics: metrics),
            alpn: relayed
        )
    }

    static func now() -> Int64 { Int64(Date().timeIntervalSince1970) }

    /// The line to warn with when the control plane's own trust file (`KAIZEN_API_CA_FILE`) holds the inspection CA;
    /// the default store it shares with upstreams is named by `distrustWarnings`.
    static func controlPlaneDistrustWarning(apiCAFile file: String?, ca: OpenSSLCertificate) -> String? {
        guard let file, TrustSource.additionalFile(path: file).holds(sameSubjectAndKeyAs: ca) else { return nil }
        return "\(ConfigurationKey.apiCAFile.variable)=\(file) holds the inspection CA (KAIZEN_CA_CERT, \(ca.subjectDescription)): it is never trusted for the control plane, so a control plane whose chain ends in it is refused as untrusted; take it out of that file, which is for the CA of the control plane's certificate"
    }

    /// One line per place the upstream trust reads that holds the inspection CA (by subject and key: a re-issued copy
    /// counts): it is left out of the proxy's own verifications all the same, and the line says where it is and how
    /// to take it out.
    static func distrustWarnings(_ trust: OpenSSLContext.Configuration, ca: OpenSSLCertificate) -> [String] {
        let holds = "holds the inspection CA (KAIZEN_CA_CERT, \(ca.subjectDescription)): it is never trusted for upstreams or the control plane, so a server whose chain ends in it is refused as untrusted"
        return TrustSource.sources(of: trust).filter { $0.holds(sameSubjectAndKeyAs: ca) }.map { source in
            switch source {
            case .defaultFile(let path, let variable?):
                "\(variable)=\(path) in the proxy's own environment \(holds); unset \(variable) for the proxy (a bundle with the CA, as ca doctor --write-bundle writes, is for the agent's clients)"
            case .defaultDirectory(let path, let variable?):
                "\(variable)=\(path) in the proxy's own environment \(holds); take the CA out of that directory, or unset \(variable) for the proxy"
            case .defaultFile(let path, nil), .defaultDirectory(let path, nil):
                "the system trust store (\(path)) \(holds); take the CA out of the trust store of the machine or image the proxy runs in (it is for the agent's clients)"
            case .additionalFile(let path):
                "\(ConfigurationKey.upstreamCAFile.variable)=\(path) \(holds); take it out of that file, which is for the CAs of private upstreams"
            }
        }
    }
}

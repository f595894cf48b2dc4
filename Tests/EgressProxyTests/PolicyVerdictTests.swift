@testable import EgressProxy
import ControlPlane
import Logging
import NIOConcurrencyHelpers
import Policy
import Testing

/// What an action's verdict and a refusal say in enforce mode when no policy has been loaded for the agent.
@Suite struct PolicyVerdictTests {
    final class Verdicts: ActionSink, Sendable {
        let seen = NIOLockedValueBox<[ConnectAction.Verdict]>([])
        func record(_ record: ActionRecord) {
            if case .action(let action) = record { seen.withLockedValue { $0.append(action.verdict) } }
        }
    }

    /// Failing open with nothing loaded, the destination was allowed without any policy judging it: the verdict says
    /// so, not "allowed by policy". Failing closed, the refusal names the reason plainly.
    @Test func enforcingWithoutAPolicySaysNoPolicyJudged() throws {
        let store = PolicyStore(
            configuration: .init(
                endpoint: try ControlPlaneEndpoint(url: "http://127.0.0.1:9"), apiKey: "", tls: nil, agents: ["test"],
                refreshInterval: .seconds(60), cacheDirectory: nil),
            logger: Logger(label: "test"))
        let sink = Verdicts()
        var reporting = Reporting(agent: "test", sink: sink, logger: Logger(label: "test"))
        reporting.policy = PolicyCheck(store: store, enforcing: true, failClosed: false)
        var metadata = ConnectMetadata(
            eventID: EventID.generate(), transport: .connect, host: "example.test", port: 443, client: "127.0.0.1:1",
            startedAt: "2026-11-28T00:00:00.000Z", outcome: .connected)
        #expect(reporting.judge(&metadata, host: "example.test", address: nil) == nil)
        reporting.action(target: "example.test:443", metadata: metadata)
        #expect(sink.seen.withLockedValue { $0 } == [ConnectAction.Verdict(decision: "allow", reason: "no policy loaded (KAIZEN_POLICY_FAIL=open)")])
        #expect(Reporting.blockedByPolicy(PolicyCheck.noPolicyReason) == "destination blocked: no policy loaded (KAIZEN_POLICY_FAIL=closed)")
        #expect(Reporting.blockedByPolicy("no-paste-sites") == "destination blocked by policy no-paste-sites")
    }
}

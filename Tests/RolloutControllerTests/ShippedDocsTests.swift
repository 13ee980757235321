import Foundation
import RolloutController
import RolloutGate
import RolloutTestSupport
import Testing

private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

@Suite("Shipped policy example and alert rules")
struct ShippedDocsTests {
    @Test func gmailExampleReproducesTheOriginalPolicy() throws {
        let yaml = try String(contentsOf: root.appendingPathComponent("docs/examples/gmail.yaml"), encoding: .utf8)
        let gmail = try #require(try ControllerPolicy(yaml: yaml).features.first)
        #expect(gmail.steps.map(\.description) == ["10", "50", "100"])
        #expect(gmail.rollbackTo == .percent(try #require(RolloutPercent(parsing: "10"))))
        #expect(gmail.checks.map(\.name) == ["error_rate", "latency_p95", "oauth_refresh_failures"])
        #expect(gmail.checks.map(\.max) == [0.01, 0.5, 5])
        #expect(gmail.checks.allSatisfy { $0.onViolation == .rollback })
        #expect(gmail.checks[2].query.contains("[15m]"))
    }

    @Test(.requiresPrometheus) func alertRulesPassPromtool() async throws {
        let promtool = try #require(executablePath("promtool"), "promtool comes with Debian's prometheus package")
        let result = try await runCommand(promtool, ["check", "rules", root.appendingPathComponent("docs/prometheus-alerts.yml").path])
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("SUCCESS: 5 rules found"))
    }
}

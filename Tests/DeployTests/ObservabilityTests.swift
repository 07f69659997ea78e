import Foundation
import Testing
import TestSupport

/// A real plugin that has served traffic under two keys (Encrypt and Decrypt under the first, a rotation, Encrypt
/// under the second and Decrypt under the first again), so that every series it can export exists.
final class LivePlugin: @unchecked Sendable {
    // Owned by one test at a time.
    let plugin: PluginProcess
    let port: Int
    let keys: (old: String, new: String)
    /// A data key wrapped under the old key.
    let oldCiphertext: Data

    init(name: String) throws {
        plugin = try PluginProcess(name: name)
        port = LoopbackHTTP.freePort()
        try plugin.start(["--http-listen", "127.0.0.1:\(port)", "--probe-interval", "0.5"])
        let client = try plugin.client()
        let seed = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let old = try client.encrypt(seed)
        _ = try client.decrypt(old.ciphertext, keyID: old.keyID)
        let rotated = try plugin.run(["rotate"] + plugin.tokenArguments)
        guard rotated.status == 0 else { throw FixtureError("rotate failed: \(rotated.stderr)") }
        let newKey = rotated.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let deadline = Date().addingTimeInterval(10)
        while try client.status().keyID != newKey {
            guard Date() < deadline else { throw FixtureError("the plugin did not pick up \(newKey)") }
            usleep(100_000)
        }
        _ = try client.encrypt(seed)
        _ = try client.decrypt(old.ciphertext, keyID: old.keyID)
        keys = (old.keyID, newKey)
        oldCiphertext = old.ciphertext
    }

    func metrics() throws -> String {
        let (status, body) = try LoopbackHTTP.get(port: port, path: "/metrics")
        guard status == 200 else { throw FixtureError("/metrics answered \(status)") }
        return body
    }

    /// Every sample name on /metrics (histograms as _bucket, _sum and _count).
    func exportedNames() throws -> Set<String> {
        Set(try metrics().split(separator: "\n").filter { !$0.hasPrefix("#") }.compactMap {
            $0.split(whereSeparator: { $0 == "{" || $0 == " " }).first.map(String.init)
        })
    }
}

@Suite("deploy/observability: rules, alert tests and dashboard checked with promtool against a live plugin")
struct ObservabilityTests {
    @Test("promtool check rules, and promtool test rules passes with a firing and a quiet case for every alert")
    func rulesAndTheirUnitTests() throws {
        let rules = Repository.url(Observability.rulesPath).path
        let checked = try Promtool.run(["check", "rules", rules])
        #expect(checked.status == 0, "\(checked.stdout)\(checked.stderr)")
        let testFiles = try FileManager.default.contentsOfDirectory(atPath: Repository.url(Observability.testsDirectory).path)
            .filter { $0.hasSuffix(".yaml") }.sorted().map { Repository.url("\(Observability.testsDirectory)/\($0)").path }
        #expect(testFiles.count >= 1)
        let tested = try Promtool.run(["test", "rules"] + testFiles)
        #expect(tested.status == 0, "\(tested.stdout)\(tested.stderr)")
        #expect(tested.stdout.components(separatedBy: "SUCCESS").count - 1 == testFiles.count)
        // Every alert is expected to fire somewhere and to stay quiet somewhere else.
        var fires = Set<String>()
        var quiet = Set<String>()
        for file in testFiles {
            let document = try #require(try Repository.yaml(String(file.dropFirst(Repository.root.path.count + 1))) as? [String: Any])
            for test in document["tests"] as? [[String: Any]] ?? [] {
                for check in test["alert_rule_test"] as? [[String: Any]] ?? [] {
                    let name = try #require(check["alertname"] as? String)
                    if (check["exp_alerts"] as? [Any])?.isEmpty == false { fires.insert(name) } else { quiet.insert(name) }
                }
            }
        }
        let alerts = try Observability.alertNames()
        #expect(alerts.count >= 9)
        for alert in alerts {
            #expect(fires.contains(alert), "no promtool test where \(alert) fires")
            #expect(quiet.contains(alert), "no promtool test where \(alert) stays quiet")
        }
        #expect(fires.union(quiet).subtracting(alerts).isEmpty, "tests name alerts that do not exist: \(fires.union(quiet).subtracting(alerts))")
    }

    @Test("every dashboard and README expression parses with Prometheus' parser; the scrape configuration is valid")
    func dashboardExpressionsParse() throws {
        let dashboard = try Observability.dashboardExpressions()
        #expect(dashboard.count >= 20)
        let readme = try Observability.readmeExpressions()
        #expect(readme.count >= 6)
        let expressions = dashboard + readme
        let folder = try TemporaryDirectory.make(prefix: "dashboard-promql")
        let file = folder.appendingPathComponent("dashboard-rules.yaml")
        try Observability.asRuleFile(expressions).write(to: file, atomically: true, encoding: .utf8)
        let checked = try Promtool.run(["check", "rules", file.path])
        #expect(checked.status == 0, "\(checked.stdout)\(checked.stderr)")
        #expect(checked.stdout.contains("SUCCESS: \(expressions.count) rules found"))
        let config = try Promtool.run(["check", "config", Repository.url(Observability.prometheusConfigPath).path])
        #expect(config.status == 0, "\(config.stdout)\(config.stderr)")
        // Panels with queries, every one on the same data source variable.
        let panels = try Observability.panels().filter { $0["type"] as? String != "row" }
        for panel in panels {
            let targets = panel["targets"] as? [[String: Any]] ?? []
            #expect(!targets.isEmpty, "panel \(panel["title"] ?? "") has no query")
            #expect((panel["datasource"] as? [String: Any])?["uid"] as? String == "${datasource}")
        }
    }

    @Test("the name extraction finds metrics and skips functions, labels, keywords, durations and numbers")
    func nameExtraction() {
        let expr = #"sum by (job, le) (rate(foo_bucket{a="b",le=~"x|y"}[5m])) / on (instance) group_left (key_id) bar unless ignoring (operation) baz offset 1h > 1e9 * 7 * 86400 and time() - qux:recorded < 0.5"#
        #expect(PromQLNames.metricNames(expr) == ["foo_bucket", "bar", "baz", "qux:recorded"])
        #expect(PromQLNames.metricNames(#"count(count by (key_id) (p11kms_current_key_info{job=~".*"}))"#) == ["p11kms_current_key_info"])
    }

    @Test("promtool check metrics passes on a live plugin's /metrics; every metric named in the rules and the dashboard is exported")
    func liveMetrics() throws {
        let live = try LivePlugin(name: "obs-live")
        let text = try live.metrics()
        let lint = try Promtool.run(["check", "metrics"], stdin: text)
        #expect(lint.status == 0 && lint.stdout.isEmpty && lint.stderr.isEmpty, "promtool check metrics: \(lint.stdout)\(lint.stderr)")
        let exported = try live.exportedNames()
        #expect(exported.contains("p11kms_key_operations_total") && exported.contains("p11kms_current_key_info"))
        let recorded = try Observability.recordNames()
        // `up` is made by Prometheus for every target.
        // The README's runbook queries name kube-apiserver's metrics too; its p11kms ones must exist.
        let expressions = try Observability.ruleExpressions() + Observability.dashboardExpressions() + Observability.readmeExpressions()
        var missing: [String: Set<String>] = [:]
        var used = Set<String>()
        for expression in expressions {
            for name in PromQLNames.metricNames(expression.promQL) where name != "up" && !name.hasPrefix("apiserver_") {
                used.insert(name)
                if recorded.contains(name) { continue }
                if !exported.contains(name) { missing[name, default: []].insert(expression.origin) }
            }
        }
        #expect(used.count >= 15)
        for (name, origins) in missing.sorted(by: { $0.key < $1.key }) {
            Issue.record("\(name) is used but this build's plugin does not export it; used in: \(origins.sorted().joined(separator: "; "))")
        }
        // The per-key series of both keys, as the rules and the dashboard expect them.
        for key in [live.keys.old, live.keys.new] {
            #expect(text.contains("p11kms_root_key_created_timestamp_seconds{key_id=\"\(key)\"}"))
            #expect(text.contains("p11kms_key_last_used_timestamp_seconds{key_id=\"\(key)\",operation=\"encrypt\"}"))
        }
        #expect(text.contains("p11kms_current_key_info{key_id=\"\(live.keys.new)\"} 1"))
        #expect(!text.contains("p11kms_current_key_info{key_id=\"\(live.keys.old)\"}"))
    }

    @Test("the README lists every alert and every dashboard panel, and says how the encryption budget is watched")
    func readmeDescribesAlertsAndPanels() throws {
        let readme = try Repository.text("README.md")
        let missingAlerts = try Observability.alertNames().filter { !readme.contains("`\($0)`") }
        #expect(missingAlerts.isEmpty, "README does not list the alerts \(missingAlerts)")
        let missingPanels = try Observability.panels().compactMap { $0["title"] as? String }.filter { !readme.contains($0) }
        #expect(missingPanels.isEmpty, "README does not describe the panels \(missingPanels)")
        let budgetNoted = readme.contains("`P11KMSEncryptionBudgetNearlyUsed` warns")
            && readme.contains("`p11kms_key_encryptions_reserved`") && readme.contains("`p11kms_encryption_budget`")
        #expect(budgetNoted, "README does not say how the encryption budget is watched")
        let rules = try Repository.text(Observability.rulesPath)
        #expect(rules.contains("p11kms_key_encryptions_reserved") && rules.contains("P11KMSEncryptionBudgetNearlyUsed"))
    }
}

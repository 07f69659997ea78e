import Foundation
import GRPCTransport
import Testing
import TestSupport
import Yams

/// A real Prometheus server (Debian's 2.42) on loopback, configured from deploy/observability/prometheus.yaml and
/// the shipped rules, scraping one plugin every second. The rules' `for:` durations are shortened to 2 s; the
/// expressions are the shipped ones.
final class PrometheusServer: @unchecked Sendable {
    // Owned by one test.
    static let binary = "/usr/bin/prometheus"
    let port = LoopbackHTTP.freePort()
    let folder: URL
    private let process = Process()

    struct Alert: Hashable {
        let name: String
        let state: String
        let instance: String
    }

    init(scraping target: String) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else {
            throw FixtureError("\(Self.binary) is missing: run scripts/install-deps.sh (Debian package prometheus)")
        }
        folder = try TemporaryDirectory.make(prefix: "prometheus")
        let rules = try Repository.text(Observability.rulesPath)
            .replacingOccurrences(of: #"for: [0-9]+[smh]"#, with: "for: 2s", options: .regularExpression)
        try rules.write(to: folder.appendingPathComponent("p11kms-rules.yaml"), atomically: true, encoding: .utf8)
        var config = try #require(try Repository.yaml(Observability.prometheusConfigPath) as? [String: Any])
        config["global"] = ["scrape_interval": "1s", "evaluation_interval": "1s"]
        var jobs = try #require(config["scrape_configs"] as? [[String: Any]])
        #expect(jobs.count == 1 && jobs[0]["job_name"] as? String == "p11kms")
        jobs[0]["static_configs"] = [["targets": [target]]]
        config["scrape_configs"] = jobs
        try Yams.dump(object: config).write(to: folder.appendingPathComponent("prometheus.yaml"), atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["--config.file=\(folder.appendingPathComponent("prometheus.yaml").path)",
                             "--storage.tsdb.path=\(folder.appendingPathComponent("data").path)",
                             "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn"]
        let log = folder.appendingPathComponent("prometheus.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: log)
        process.standardError = try FileHandle(forWritingTo: log)
        try process.run()
        ChildProcesses.register(process.processIdentifier)
        let deadline = Date().addingTimeInterval(30)
        while (try? LoopbackHTTP.get(port: port, path: "/-/ready").status) != 200 {
            guard Date() < deadline, process.isRunning else {
                throw FixtureError("prometheus did not become ready: \((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
            }
            usleep(200_000)
        }
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: folder)
    }

    /// The alerts Prometheus holds now (pending or firing).
    func alerts() throws -> Set<Alert> {
        let (status, body) = try LoopbackHTTP.get(port: port, path: "/api/v1/alerts")
        guard status == 200, let object = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
              let alerts = (object["data"] as? [String: Any])?["alerts"] as? [[String: Any]] else {
            throw FixtureError("/api/v1/alerts answered \(status): \(body)")
        }
        return Set(alerts.map {
            let labels = $0["labels"] as? [String: String] ?? [:]
            return Alert(name: labels["alertname"] ?? "", state: $0["state"] as? String ?? "", instance: labels["instance"] ?? "")
        })
    }

    func firing() throws -> Set<String> { Set(try alerts().filter { $0.state == "firing" }.map(\.name)) }

    /// Waits until `condition` holds for the firing alerts; returns them.
    @discardableResult
    func wait(_ seconds: TimeInterval, until condition: (Set<String>) -> Bool) throws -> Set<String> {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let now = try firing()
            if condition(now) || Date() >= deadline { return now }
            usleep(250_000)
        }
    }
}

@Suite("Prometheus 2.42 scraping a real plugin fires the shipped alerts")
struct PrometheusAlertTests {
    @Test("quiet while healthy; token gone: TokenDown and CallsFailing fire, TokenDown resolves when it returns; Decrypt under a retired key: DecryptRefused; plugin stopped: PluginDown")
    func alertsFireOnARealOutage() throws {
        let live = try LivePlugin(name: "obs-prom")
        let instance = "127.0.0.1:\(live.port)"
        let prometheus = try PrometheusServer(scraping: instance)
        let client = try live.plugin.client()
        for _ in 0..<5 { _ = try client.encrypt(Array("seed".utf8)) }

        // Healthy: a few evaluations later nothing is pending or firing.
        sleep(6)
        let healthy = try prometheus.alerts()
        #expect(healthy.isEmpty, "alerts while healthy: \(healthy)")

        // The token goes away (its directory moved, as in the outage test); calls fail with Unavailable.
        let away = live.plugin.hsm.root.appendingPathComponent("tokens.away")
        try FileManager.default.moveItem(at: live.plugin.hsm.tokenDirectory, to: away)
        let tokenGone = Date()
        #expect(waitForStatus(client, healthy: false))
        for _ in 0..<10 {
            #expect(throws: GRPCStatus.self) { _ = try client.encrypt(Array("seed".utf8)) }
        }
        let outage = try prometheus.wait(30) { $0.isSuperset(of: ["P11KMSTokenDown", "P11KMSCallsFailing"]) }
        #expect(outage.isSuperset(of: ["P11KMSTokenDown", "P11KMSCallsFailing"]), "firing: \(outage)")
        #expect(try prometheus.alerts().contains(.init(name: "P11KMSTokenDown", state: "firing", instance: instance)))
        #expect(!outage.contains("P11KMSPluginDown"))
        print("alerts firing during the token outage, \(seconds(since: tokenGone)) s after the token went: \(outage.sorted())")

        // The token returns: TokenDown resolves without a restart.
        try FileManager.default.moveItem(at: away, to: live.plugin.hsm.tokenDirectory)
        let tokenBack = Date()
        #expect(waitForStatus(client, healthy: true))
        let recovered = try prometheus.wait(30) { !$0.contains("P11KMSTokenDown") }
        #expect(!recovered.contains("P11KMSTokenDown"), "firing after recovery: \(recovered)")
        print("P11KMSTokenDown resolved \(seconds(since: tokenBack)) s after the token returned")

        // The old key is retired and something still asks for it.
        let retired = try live.plugin.run(["retire", live.keys.old] + live.plugin.tokenArguments)
        #expect(retired.status == 0, "\(retired.stderr)")
        let refused = Date().addingTimeInterval(10)
        var sawRefusal = false
        while !sawRefusal && Date() < refused {
            do {
                _ = try client.decrypt(live.oldCiphertext, keyID: live.keys.old)
                usleep(200_000)
            } catch let status as GRPCStatus {
                sawRefusal = status.code == .failedPrecondition
            }
        }
        #expect(sawRefusal)
        let refusedAt = Date()
        let afterRetire = try prometheus.wait(30) { $0.contains("P11KMSDecryptRefused") }
        #expect(afterRetire.contains("P11KMSDecryptRefused"), "firing: \(afterRetire)")
        print("alerts firing \(seconds(since: refusedAt)) s after a Decrypt under the retired key: \(afterRetire.sorted())")

        // The plugin stops: Prometheus cannot scrape it.
        #expect(live.plugin.stop() == 0)
        let stoppedAt = Date()
        let stopped = try prometheus.wait(30) { $0.contains("P11KMSPluginDown") }
        #expect(stopped.contains("P11KMSPluginDown"), "firing: \(stopped)")
        print("alerts firing \(seconds(since: stoppedAt)) s after the plugin stopped: \(stopped.sorted())")
    }

    private func seconds(since start: Date) -> String {
        String(format: "%.1f", Date().timeIntervalSince(start))
    }

    private func waitForStatus(_ client: KMSClient, healthy: Bool) -> Bool {
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            if let status = try? client.status(), (status.healthz == "ok") == healthy { return true }
            usleep(100_000)
        }
        return false
    }
}

// Measures `p11kms audit` on a local etcd holding 100,000 Secrets written as kube-apiserver writes them.
//
//   swift build -c release && .build/release/AuditBench [--secrets N] [--runs R] [--page-size P] [--hold]
//
// (scripts/bench-audit.sh does both.) Starts its own etcd on loopback and its own plugin on a SoftHSM token,
// loads the Secrets with parallel Puts, then times the release `p11kms audit` command end to end, and the
// in-process scan for comparison.
import EtcdAudit
import Foundation
import Synchronization
import TestSupport

struct Settings {
    var secrets = 100_000
    var runs = 3
    var pageSize = 1000
    /// Keep etcd and the plugin running after loading, for profiling by hand.
    var hold = false

    init(_ arguments: [String]) {
        var iterator = arguments.dropFirst().makeIterator()
        while let flag = iterator.next() {
            if flag == "--hold" {
                hold = true
                continue
            }
            guard let value = iterator.next().flatMap(Int.init) else { fatalError("usage: AuditBench [--secrets N] [--runs R] [--page-size P]") }
            switch flag {
            case "--secrets": secrets = value
            case "--runs": runs = value
            case "--page-size": pageSize = value
            default: fatalError("unknown flag \(flag)")
            }
        }
    }
}

func seconds(since start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

func log(_ text: String) { FileHandle.standardError.write(Data((text + "\n").utf8)) }

/// Everything lives in this function so that etcd and the plugin are stopped (by their deinit) on every exit path.
func bench(_ settings: Settings) throws {
    let etcd = try EtcdFixture(extraArguments: ["--quota-backend-bytes", String(8 << 30)])
    let plugin = try PluginProcess(name: "bench")
    try plugin.start()
    let etcdClient = try EtcdClient(configuration: EtcdClientConfiguration(endpoints: [etcd.endpoint]))
    let pluginClient = try PluginClient(endpoint: plugin.listen)

    // What a Fabric node's Secret holds: a TLS key, its certificate and the CA certificate (about 2 KiB).
    let data: [String: [UInt8]] = ["tls.key": APIServerWriter.random(241), "tls.crt": APIServerWriter.random(880),
                                   "ca.crt": APIServerWriter.random(760)]
    func state() throws -> KMSv2WriteState {
        try KMSv2WriteState(provider: "hsm") { seed in
            do throws(AuditError) { return try pluginClient.wrap(seed) } catch { throw error }
        }
    }
    let old = try state()
    let staleCount = settings.secrets / 10
    let plainCount = settings.secrets / 20

    /// Writes Secrets `range` with parallel KV.Txn batches of 128 Puts.
    func load(_ range: Range<Int>, _ value: @Sendable (String, String, String) throws -> [UInt8]) throws {
        let failures = Mutex<[String]>([])
        let start = ContinuousClock.now
        let chunks = stride(from: range.lowerBound, to: range.upperBound, by: EtcdClient.maxTxnOps).map {
            $0..<min($0 + EtcdClient.maxTxnOps, range.upperBound)
        }
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            for chunk in stride(from: worker, to: chunks.count, by: 4).map({ chunks[$0] }) {
                do {
                    let pairs = try chunk.map { i -> (key: [UInt8], value: [UInt8]) in
                        let namespace = "org\(i % 50)", name = "node-\(i)"
                        let key = APIServerWriter.key(namespace: namespace, name: name)
                        return (Array(key.utf8), try value(key, namespace, name))
                    }
                    try etcdClient.putAll(pairs)
                } catch {
                    failures.withLock { $0.append("\(error)") }
                    return
                }
            }
        }
        if let failure = failures.withLock({ $0.first }) { throw FixtureError("load failed: \(failure)") }
        log("  wrote \(range.count) Secrets in \(String(format: "%.1f", seconds(since: start))) s")
    }

    log("loading \(settings.secrets) Secrets: \(staleCount) under the first key, then a rotation, \(plainCount) plaintext, the rest current")
    try load(0..<staleCount) { key, ns, name in
        try old.value(etcdKey: key, plaintext: APIServerWriter.secretProtobuf(namespace: ns, name: name, data: data))
    }
    let rotation = try plugin.run(["rotate"] + plugin.tokenArguments)
    guard rotation.status == 0 else { throw FixtureError("rotate failed: \(rotation.stderr)") }
    let newKey = rotation.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    while try pluginClient.status().keyID != newKey { usleep(50_000) }
    let current = try state()
    try load(staleCount..<(staleCount + plainCount)) { _, ns, name in
        APIServerWriter.secretProtobuf(namespace: ns, name: name, data: data)
    }
    try load((staleCount + plainCount)..<settings.secrets) { key, ns, name in
        try current.value(etcdKey: key, plaintext: APIServerWriter.secretProtobuf(namespace: ns, name: name, data: data))
    }

    if settings.hold {
        print("etcd: \(etcd.endpoint)\nplugin: \(plugin.listen)\nprovider: hsm")
        print("p11kms audit --etcd-endpoints \(etcd.endpoint) --listen \(plugin.listen) --provider hsm")
        fflush(nil)
        // Until SIGINT or SIGTERM; then etcd and the plugin are stopped and their folders removed.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        var received: Int32 = 0
        sigwait(&signals, &received)
        return
    }

    log("\nin-process scan (AuditRunner), page size \(settings.pageSize):")
    for run in 1...settings.runs {
        let report = try AuditRunner(etcd: etcdClient, plugin: pluginClient,
                                     options: AuditOptions(provider: "hsm", pageSize: settings.pageSize)).run()
        guard report.total == settings.secrets else { throw FixtureError("audited \(report.total) Secrets") }
        log("  run \(run): \(report.total) Secrets in \(String(format: "%.3f", report.scanSeconds)) s = \(Int(Double(report.total) / report.scanSeconds)) Secrets/s")
    }

    for format in ["table", "json"] {
        log("\np11kms audit --format \(format) (whole command: start-up, Status, probes, scan, report):")
        for run in 1...settings.runs {
            let start = ContinuousClock.now
            let result = try Command.run(PluginProcess.executable, [
                "audit", "--etcd-endpoints", etcd.endpoint, "--listen", plugin.listen, "--provider", "hsm",
                "--page-size", String(settings.pageSize), "--format", format,
            ])
            let elapsed = seconds(since: start)
            guard result.status == 1 else { throw FixtureError("unexpected exit status \(result.status): \(result.stderr)") }
            log("  run \(run): \(String(format: "%.3f", elapsed)) s = \(Int(Double(settings.secrets) / elapsed)) Secrets/s (\(result.stdout.utf8.count) bytes out)")
        }
    }

    log("\np11kms audit --verify:")
    let start = ContinuousClock.now
    let verified = try Command.run(PluginProcess.executable, [
        "audit", "--etcd-endpoints", etcd.endpoint, "--listen", plugin.listen, "--provider", "hsm", "--verify",
    ])
    log("  \(String(format: "%.3f", seconds(since: start))) s, exit \(verified.status)")
}

let settings = Settings(CommandLine.arguments)
if settings.hold {
    // Block the signals before any thread starts, so that sigwait receives them.
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGINT)
    sigaddset(&signals, SIGTERM)
    pthread_sigmask(SIG_BLOCK, &signals, nil)
}
do {
    try bench(settings)
} catch {
    log("AuditBench: \(error)")
    exit(1)
}

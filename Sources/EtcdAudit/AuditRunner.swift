import EtcdProto
import Foundation
import GRPCTransport

/// What to audit.
public struct AuditOptions: Sendable {
    /// The KMS provider name in the EncryptionConfiguration.
    public var provider: String
    /// kube-apiserver's `--etcd-prefix`.
    public var etcdPrefix: String
    /// Only these namespaces (all when empty).
    public var namespaces: [String]
    /// The resource types the EncryptionConfiguration encrypts with this provider (`secrets` by default).
    public var resources: [ResourceType]
    /// Only the Secrets a Fabric operator keeps node keys in (`*-keystore`, `*-msp`, `*-tls`, `*-crypto`).
    public var fabric: Bool
    /// Keys per Range call.
    public var pageSize: Int
    /// Decrypt every distinct DEK of this provider's KMS v2 Secrets.
    public var verify: Bool
    /// Decrypt calls in flight during `--verify`.
    public var verifyConcurrency: Int

    public init(provider: String, etcdPrefix: String = "/registry", namespaces: [String] = [], pageSize: Int = 1000,
                verify: Bool = false, verifyConcurrency: Int = 4, resources: [ResourceType] = [.secrets],
                fabric: Bool = false) {
        self.provider = provider
        self.etcdPrefix = etcdPrefix
        self.namespaces = namespaces
        self.resources = resources
        self.fabric = fabric
        self.pageSize = pageSize
        self.verify = verify
        self.verifyConcurrency = verifyConcurrency
    }
}

/// Progress reported while the audit runs (for a terminal).
public struct AuditProgress: Sendable {
    public enum Phase: Sendable { case scanning, verifying }
    public var phase: Phase
    public var done: Int
    /// Expected total (Secrets in range at the pinned revision, or DEKs to verify); 0 when not known yet.
    public var total: Int
    public var elapsed: Duration
}

/// Reads every Secret under `<prefix>/secrets/` (and every object of the other `resources`) from etcd at one
/// revision, classifies its stored bytes and asks the plugin which of the key_ids found it holds. Blocking: run it on a thread of its own (the CLI's main thread).
public struct AuditRunner: Sendable {
    public let etcd: EtcdClient
    public let plugin: PluginClient
    public let options: AuditOptions

    public init(etcd: EtcdClient, plugin: PluginClient, options: AuditOptions) {
        self.etcd = etcd
        self.plugin = plugin
        self.options = options
    }

    public func run(progress: ((AuditProgress) -> Void)? = nil) throws(AuditError) -> AuditReport {
        // KMS v1 provider names may contain ':' (v2 names may not); the classifier matches the name exactly.
        guard !options.provider.isEmpty else { throw AuditError(.configuration, "the provider name must be non-empty") }
        guard !options.resources.isEmpty else { throw AuditError(.configuration, "--resources lists no resource type") }
        if options.fabric, !options.resources.contains(.secrets) {
            throw AuditError(.configuration, "--fabric selects Secrets: --resources must include secrets")
        }
        guard options.pageSize > 0 else { throw AuditError(.configuration, "the page size must be positive") }
        for namespace in options.namespaces where namespace.isEmpty || namespace.contains("/") {
            throw AuditError(.configuration, "\"\(namespace)\" is not a namespace name")
        }
        let status = try plugin.status()
        guard !status.keyID.isEmpty else {
            throw AuditError(.pluginFailed, "the plugin at \(plugin.endpoint) reports no current key_id (healthz: \(status.healthz))")
        }

        let clock = ContinuousClock()
        let started = clock.now
        let startedAt = Date()
        progress?(AuditProgress(phase: .scanning, done: 0, total: 0, elapsed: .zero))
        var scan = try scanEtcd { done, total in
            progress?(AuditProgress(phase: .scanning, done: done, total: total, elapsed: clock.now - started))
        }
        let scanSeconds = Self.seconds(clock.now - started)

        var verification: Verification?
        let outcomes: [Int: Result<Void, GRPCStatus>]
        if options.verify {
            let verifyStarted = clock.now
            outcomes = try unwrapAll(scan.deks) { done in
                progress?(AuditProgress(phase: .verifying, done: done, total: scan.deks.count,
                                        elapsed: clock.now - verifyStarted))
            }
            verification = Verification(checked: scan.deks.count, failures: Self.failures(outcomes, scan: scan))
        } else {
            outcomes = [:]
        }
        let keys = try resolveKeys(scan: scan, currentKeyID: status.keyID, outcomes: outcomes)
        scan.applyKeyStates(keys)
        let scope = AuditScope(provider: options.provider, etcdPrefix: EtcdKeys.normalizedPrefix(options.etcdPrefix),
                               resources: options.resources.map(\.name), namespaces: Set(options.namespaces).sorted(),
                               nameFilter: options.fabric ? "fabric" : "", prefixes: scan.prefixes,
                               revision: scan.revision, time: startedAt)
        return AuditReport(provider: options.provider, scannedPrefixes: scan.prefixes, revision: scan.revision,
                           plugin: status, secrets: scan.secrets, keys: keys, verification: verification,
                           scanSeconds: scanSeconds, scope: scope)
    }

    // MARK: Scan

    private func scanEtcd(progress: (Int, Int) -> Void) throws(AuditError) -> ScanResult {
        let namespaces = Set(options.namespaces).sorted()
        var ranges: [ScannedRange] = []
        for resource in options.resources {
            let base = EtcdKeys.resourcePrefix(etcdPrefix: options.etcdPrefix, resource: resource)
            if namespaces.isEmpty {
                ranges.append(ScannedRange(resource: resource, prefix: base, objectPrefixLength: base.count))
            } else {
                for namespace in namespaces {
                    ranges.append(ScannedRange(resource: resource, prefix: EtcdKeys.resourcePrefix(
                        etcdPrefix: options.etcdPrefix, resource: resource, namespace: namespace), objectPrefixLength: base.count))
                }
            }
        }
        var result = ScanResult(classifier: StorageClassifier(provider: options.provider), fabricOnly: options.fabric)
        result.prefixes = ranges.map { String(decoding: $0.prefix, as: UTF8.self) }
        var expected = 0
        var seen = 0
        for range in ranges {
            var counted = false
            try etcd.scan(prefix: range.prefix, pageSize: options.pageSize, revision: result.revision) { page throws(AuditError) in
                if result.revision == 0 { result.revision = page.revision }
                if !counted {
                    counted = true
                    expected += Int(page.total)
                }
                result.secrets.reserveCapacity(expected)
                for kv in page.kvs { result.add(kv, in: range) }
                seen += page.kvs.count
                progress(seen, expected)
            }
        }
        return result
    }

    // MARK: Keys

    private func resolveKeys(scan: ScanResult, currentKeyID: String,
                             outcomes: [Int: Result<Void, GRPCStatus>]) throws(AuditError) -> [KeyFinding] {
        var findings: [KeyFinding] = []
        for keyID in scan.keyOrder {
            let deks = scan.deksByKey[keyID] ?? []
            let secrets = deks.reduce(0) { $0 + scan.secretsByDEK[$1].count }
            var finding = KeyFinding(keyID: keyID, status: .current, secrets: secrets, deks: deks.count)
            if keyID != currentKeyID {
                finding.status = try probe(keyID: keyID, deks: deks, scan: scan, outcomes: outcomes)
            }
            findings.append(finding)
        }
        return findings
    }

    /// A key is held when the plugin unwraps one DEK stored under it. Without `--verify`, up to three distinct DEKs
    /// are tried (one damaged DEK must not condemn a key).
    private func probe(keyID: String, deks: [Int], scan: ScanResult,
                       outcomes: [Int: Result<Void, GRPCStatus>]) throws(AuditError) -> KeyFinding.Status {
        var reason = ""
        if options.verify {
            for dek in deks {
                switch outcomes[dek] {
                case .success?: return .held
                case .failure(let status)?: if reason.isEmpty { reason = status.message.isEmpty ? "\(status.code)" : status.message }
                case nil: break
                }
            }
            return .notHeld(reason: reason)
        }
        for dek in deks.prefix(3) {
            do throws(GRPCStatus) {
                try plugin.unwrap(scan.deks[dek])
                return .held
            } catch {
                try Self.requireAnswer(error, plugin: plugin)
                if reason.isEmpty { reason = error.message.isEmpty ? "\(error.code)" : error.message }
            }
        }
        return .notHeld(reason: reason)
    }

    /// Unavailable, deadline exceeded or unimplemented mean the plugin did not judge the DEK: the audit cannot run.
    static func requireAnswer(_ status: GRPCStatus, plugin: PluginClient) throws(AuditError) {
        switch status.code {
        case .unavailable, .deadlineExceeded:
            throw AuditError(.pluginUnavailable, "the plugin at \(plugin.endpoint) does not answer Decrypt: \(status)", status: status)
        case .unimplemented:
            throw AuditError(.pluginFailed, "the plugin at \(plugin.endpoint) does not implement KMS v2 Decrypt: \(status)", status: status)
        default:
            return
        }
    }

    // MARK: Verify

    private func unwrapAll(_ deks: [WrappedDEK], progress: (Int) -> Void) throws(AuditError) -> [Int: Result<Void, GRPCStatus>] {
        let results = UnwrapResults(count: deks.count)
        let workers = max(1, min(options.verifyConcurrency, deks.count))
        let plugin = self.plugin
        let group = DispatchGroup()
        for _ in 0..<workers {
            group.enter()
            Thread {
                while let index = results.next() {
                    do throws(GRPCStatus) {
                        try plugin.unwrap(deks[index])
                        results.set(index, .success(()))
                    } catch {
                        results.set(index, .failure(error))
                        if error.code == .unavailable || error.code == .deadlineExceeded || error.code == .unimplemented {
                            results.stop()
                        }
                    }
                }
                group.leave()
            }.start()
        }
        while group.wait(timeout: .now() + .milliseconds(200)) == .timedOut { progress(results.finished) }
        progress(results.finished)
        let outcomes = results.all()
        for case .failure(let status) in outcomes.values { try Self.requireAnswer(status, plugin: plugin) }
        return outcomes
    }

    private static func failures(_ outcomes: [Int: Result<Void, GRPCStatus>], scan: ScanResult) -> [Verification.Failure] {
        outcomes.compactMap { index, outcome -> Verification.Failure? in
            guard case .failure(let status) = outcome else { return nil }
            let names = scan.secretsByDEK[index].map { "\(scan.secrets[$0].namespace)/\(scan.secrets[$0].name)" }
            return Verification.Failure(keyID: scan.deks[index].keyID,
                                        message: status.message.isEmpty ? "\(status.code)" : status.message,
                                        secrets: names)
        }
        .sorted { ($0.keyID, $0.secrets.first ?? "") < ($1.keyID, $1.secrets.first ?? "") }
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

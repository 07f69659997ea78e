import EtcdAudit
import Foundation
import Synchronization
import KMSProto
import Testing
import TestSupport

/// A real etcd, a real plugin (`p11kms serve` on a SoftHSM token) and Secrets written as kube-apiserver writes them.
final class AuditWorld {
    static let provider = "hsm"

    let etcd: EtcdFixture
    let plugin: PluginProcess
    let etcdClient: EtcdClient
    let pluginClient: PluginClient

    init(name: String, tls: Bool = false) throws {
        etcd = try EtcdFixture(tls: tls)
        plugin = try PluginProcess(name: name)
        try plugin.start()
        etcdClient = try EtcdClient(configuration: Self.configuration(etcd))
        pluginClient = try PluginClient(endpoint: plugin.listen)
    }

    static func configuration(_ etcd: EtcdFixture) -> EtcdClientConfiguration {
        guard let certs = etcd.certificates else { return EtcdClientConfiguration(endpoints: [etcd.endpoint]) }
        return EtcdClientConfiguration(endpoints: [etcd.endpoint], caCertificatePEM: certs.pem(certs.caFile),
                                       certificatePEM: certs.pem(certs.clientCertFile),
                                       privateKeyPEM: certs.pem(certs.clientKeyFile))
    }

    /// The apiserver's KMS v2 state after a Status that reported the plugin's current key: a fresh seed wrapped by it.
    func kmsV2State(provider: String = AuditWorld.provider, sourceType: KMSv2WriteState.SourceType = .seed) throws -> KMSv2WriteState {
        try KMSv2WriteState(provider: provider, sourceType: sourceType) { seed in
            do throws(AuditError) { return try pluginClient.wrap(seed) } catch { throw error }
        }
    }

    static func plaintext(_ namespace: String, _ name: String) -> [UInt8] {
        APIServerWriter.secretProtobuf(namespace: namespace, name: name,
                                       data: ["tls.key": Array("-----BEGIN PRIVATE KEY----- \(name)".utf8)])
    }

    /// Writes `count` Secrets `<namespace>/<name>-NNNN` encrypted with `state`; returns their keys.
    @discardableResult
    func writeSecrets(_ count: Int, namespace: String, name: String = "s", state: KMSv2WriteState) throws -> [String] {
        let keys = (0..<count).map { APIServerWriter.key(namespace: namespace, name: "\(name)-\(String(format: "%04d", $0))") }
        try putAll(keys.map { key in
            let parts = key.split(separator: "/")
            return (key, try state.value(etcdKey: key, plaintext: Self.plaintext(String(parts[2]), String(parts[3]))))
        })
        return keys
    }

    func put(_ key: String, _ value: [UInt8]) throws {
        try etcdClient.put(key: Array(key.utf8), value: value)
    }

    /// Puts in parallel (etcd batches concurrent writes into one fsync).
    func putAll(_ pairs: [(String, [UInt8])]) throws {
        let failures = FailureBox()
        let client = etcdClient
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            for index in stride(from: worker, to: pairs.count, by: 8) {
                do throws(AuditError) {
                    try client.put(key: Array(pairs[index].0.utf8), value: pairs[index].1)
                } catch {
                    failures.record(error)
                }
            }
        }
        if let error = failures.first { throw error }
    }

    func audit(_ options: AuditOptions? = nil) throws -> AuditReport {
        try AuditRunner(etcd: etcdClient, plugin: pluginClient,
                        options: options ?? AuditOptions(provider: Self.provider, pageSize: 250)).run()
    }

    /// Runs the `p11kms audit` command line against this world.
    func cli(_ extra: [String], listen: String? = nil, etcdArguments: [String]? = nil) throws -> Command.Result {
        var arguments = ["audit", "--provider", Self.provider, "--listen", listen ?? plugin.listen]
        arguments += etcdArguments ?? Self.etcdArguments(etcd)
        return try Command.run(PluginProcess.executable, arguments + extra)
    }

    static func etcdArguments(_ etcd: EtcdFixture) -> [String] {
        var arguments = ["--etcd-endpoints", etcd.endpoint]
        if let certs = etcd.certificates {
            arguments += ["--cacert", certs.caFile, "--cert", certs.clientCertFile, "--key", certs.clientKeyFile]
        }
        return arguments
    }

    func rotate() throws -> String {
        let result = try plugin.run(["rotate"] + plugin.tokenArguments)
        guard result.status == 0 else { throw FixtureError("rotate failed: \(result.stderr)") }
        let keyID = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if try pluginClient.status().keyID == keyID { return keyID }
            usleep(50_000)
        }
        throw FixtureError("the plugin did not report \(keyID) within 10 s")
    }

    func retire(_ keyID: String) throws {
        let result = try plugin.run(["retire", keyID] + plugin.tokenArguments)
        guard result.status == 0 else { throw FixtureError("retire failed: \(result.stderr)") }
    }
}

final class FailureBox: Sendable {
    private let errors = Mutex<[AuditError]>([])
    func record(_ error: AuditError) { errors.withLock { $0.append(error) } }
    var first: AuditError? { errors.withLock { $0.first } }
}

extension AuditReport {
    func count(_ state: SecretState) -> Int { countsByState[state] ?? 0 }

    func secret(_ namespace: String, _ name: String) -> AuditedSecret? {
        secrets.first { $0.namespace == namespace && $0.name == name }
    }
}

/// The JSON the CLI prints, decoded.
struct AuditJSON: Decodable {
    struct Summary: Decodable {
        let total: Int
        let by_state: [String: Int]
        let by_resource: [String: Int]?
    }
    struct Secret: Decodable {
        let namespace: String
        let name: String
        let state: String
        let provider: String
        let key_id: String
        let resource: String?
        let detail: String?
    }
    struct Verify: Decodable {
        struct Failure: Decodable {
            let key_id: String
            let error: String
            let secrets: [String]
        }
        let checked: Int
        let failed: [Failure]
    }
    let summary: Summary
    let secrets: [Secret]
    let verify: Verify?

    init(_ text: String) throws {
        self = try JSONDecoder().decode(AuditJSON.self, from: Data(text.utf8))
    }
}

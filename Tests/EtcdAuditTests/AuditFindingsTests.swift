import EtcdAudit
import Foundation
import Testing
import TestSupport

/// What the audit finds beyond keys: private keys stored in plaintext, a Fabric operator's node-key Secrets, values
/// kube-apiserver considers stale (legacy data keys) and resource types other than Secrets. Real etcd, real plugin,
/// the real binary.
@Suite(.serialized) struct AuditFindingsTests {
    /// Contents that must never appear in any output.
    static let marker = "MARKER-7f3c1a"

    static func pem(_ label: String) -> [UInt8] {
        Array("-----BEGIN \(label)-----\n\(marker)\n-----END \(label)-----\n".utf8)
    }

    @Test func plaintextPrivateKeysAndFabric() throws {
        let world = try AuditWorld(name: "audit-private")
        let old = try world.kmsV2State()
        try put(world, "org1", "orderer0-msp", state: old)
        _ = try world.rotate()
        let protobuf = [
            ("org1", "peer0-tls", ["tls.key": Self.pem("EC PRIVATE KEY"), "tls.crt": Array("-----BEGIN CERTIFICATE-----\n".utf8)]),
            ("org1", "peer0-keystore", ["9f1c2e_sk": Array(Self.marker.utf8)]),
            ("org2", "ca-crypto", ["ca.key": Self.pem("RSA PRIVATE KEY")]),
            ("org1", "app-config", ["config": Array("\(Self.marker) no key here".utf8)]),
        ]
        for (namespace, name, data) in protobuf {
            try world.put(APIServerWriter.key(namespace: namespace, name: name),
                          APIServerWriter.secretProtobuf(namespace: namespace, name: name, data: data))
        }
        try world.put(APIServerWriter.key(namespace: "org1", name: "admin-msp"),
                      APIServerWriter.secretJSON(namespace: "org1", name: "admin-msp", data: ["key.pem": Array(Self.marker.utf8)]))
        // Encrypted Secrets are never opened: a key inside one is not a finding.
        try put(world, "org1", "peer1-tls", state: try world.kmsV2State())

        let table = try world.cli([])
        #expect(table.status == 1)
        let lines = table.stdout.split(separator: "\n").map(String.init)
        // The exposed keys come first, before the counts, with the data keys' names.
        let header = try #require(lines.firstIndex { $0.hasPrefix("Exposed: private keys stored in plaintext (4)") }, "\(table.stdout)")
        #expect(header < (lines.firstIndex { $0.hasPrefix("STATE") } ?? 0))
        for needle in ["peer0-tls", "tls.key: PEM private key", "9f1c2e_sk: MSP keystore entry", "key.pem: MSP keystore entry",
                       "ca.key: PEM private key", "plaintext-private-key"] {
            #expect(table.stdout.contains(needle), "table lacks \(needle):\n\(table.stdout)")
        }
        #expect(!table.stdout.contains("tls.crt"))

        let cli = try world.cli(["--format", "json"])
        #expect(cli.status == 1)
        let json = try AuditJSON(cli.stdout)
        #expect(json.summary.by_state["plaintext-private-key"] == 4)
        #expect(json.summary.by_state["plaintext"] == 1)
        let states = Dictionary(uniqueKeysWithValues: json.secrets.map { ("\($0.namespace)/\($0.name)", $0.state) })
        #expect(states["org1/peer0-tls"] == "plaintext-private-key" && states["org1/admin-msp"] == "plaintext-private-key")
        #expect(states["org1/app-config"] == "plaintext" && states["org1/peer1-tls"] == "current")
        for output in [table.stdout, table.stderr, cli.stdout, cli.stderr] {
            #expect(!output.contains(Self.marker) && !output.contains("BEGIN"), "content leaked:\n\(output)")
        }

        // --fabric: only *-keystore, *-msp, *-tls and *-crypto Secrets, and which of them are not current.
        let fabric = try world.cli(["--fabric", "--format", "json"])
        #expect(fabric.status == 1)
        let selected = try AuditJSON(fabric.stdout)
        #expect(Set(selected.secrets.map(\.name)) == ["orderer0-msp", "peer0-tls", "peer0-keystore", "ca-crypto", "admin-msp", "peer1-tls"])
        #expect(selected.secrets.first { $0.name == "orderer0-msp" }?.state == "stale")
        #expect(fabric.stdout.contains("\"name_filter\": \"fabric\""))
        let fabricTable = try world.cli(["--fabric"])
        #expect(fabricTable.stdout.contains("--fabric: only") && fabricTable.stdout.contains("Not current (5)"), "\(fabricTable.stdout)")
        #expect(!fabricTable.stdout.contains("app-config"))
    }

    @Test func legacyDataKeysAreStaleUnderTheCurrentKey() throws {
        let world = try AuditWorld(name: "audit-legacy")
        let current = world.plugin.initialKeyID
        try world.writeSecrets(3, namespace: "org1", state: try world.kmsV2State())
        let legacy = try world.kmsV2State(sourceType: .aesGCMKey)
        #expect(legacy.keyID == current)
        let keys = try world.writeSecrets(2, namespace: "legacy", state: legacy)

        let report = try world.audit()
        #expect(report.count(.current) == 3 && report.count(.stale) == 2 && report.exitStatus == 1)
        let stale = try #require(report.secret("legacy", "s-0000"))
        #expect(stale.keyID == current && stale.detail.contains("legacy AES_GCM_KEY"))
        #expect(report.keys.first { $0.keyID == current }?.status == .current)
        let cli = try world.cli(["--format", "json", "--verify"])
        #expect(cli.status == 1)
        let json = try AuditJSON(cli.stdout)
        let row = try #require(json.secrets.first { $0.namespace == "legacy" })
        #expect(row.state == "stale" && row.key_id == current && row.detail?.contains("AES_GCM_KEY") == true)
        #expect(json.verify?.failed.isEmpty == true)

        // The apiserver rewrites them with the KDF seed: current.
        let seed = try world.kmsV2State()
        try world.putAll(try keys.map { key in
            let parts = key.split(separator: "/")
            return (key, try seed.value(etcdKey: key, plaintext: AuditWorld.plaintext(String(parts[2]), String(parts[3]))))
        })
        #expect(try world.cli([]).status == 0)
    }

    @Test func configMapsAreCoveredWithResources() throws {
        let world = try AuditWorld(name: "audit-resources")
        let first = world.plugin.initialKeyID
        let old = try world.kmsV2State()
        let encrypted = APIServerWriter.key(resourcePath: "configmaps", namespace: "org1", name: "peer-config")
        try world.put(encrypted, try old.value(etcdKey: encrypted, plaintext: APIServerWriter.configMapProtobuf(
            namespace: "org1", name: "peer-config", data: ["core.yaml": "peer: {}"])))
        try world.put(APIServerWriter.key(resourcePath: "configmaps", namespace: "org1", name: "leaked"),
                      APIServerWriter.configMapProtobuf(namespace: "org1", name: "leaked", data: ["k": String(decoding: Self.pem("PRIVATE KEY"), as: UTF8.self)]))
        try world.put(APIServerWriter.key(resourcePath: "configmaps", namespace: "org1", name: "plain"),
                      APIServerWriter.configMapProtobuf(namespace: "org1", name: "plain", data: ["a": "b"]))
        _ = try world.rotate()
        try world.writeSecrets(2, namespace: "org1", state: try world.kmsV2State())

        // Secrets only (the default): every Secret is current, the ConfigMaps are not looked at.
        let secretsOnly = try world.cli(["--format", "json"])
        #expect(secretsOnly.status == 0)
        #expect(try AuditJSON(secretsOnly.stdout).summary.total == 2)
        let unused = try world.plugin.run(["destroy", first, "--audit-json", try save(world, secretsOnly.stdout)] + world.plugin.tokenArguments)
        #expect(unused.status == 2 && unused.stderr.contains("add --yes-destroy-forever"), "\(unused.stderr)")

        let both = try world.cli(["--resources", "secrets,configmaps", "--format", "json"])
        #expect(both.status == 1, "\(both.stderr)")
        let json = try AuditJSON(both.stdout)
        #expect(json.summary.by_resource == ["secrets": 2, "configmaps": 3])
        let rows = Dictionary(uniqueKeysWithValues: json.secrets.map { ("\($0.resource ?? "")/\($0.name)", $0) })
        #expect(rows["configmaps/peer-config"]?.state == "stale" && rows["configmaps/peer-config"]?.key_id == first)
        #expect(rows["configmaps/leaked"]?.state == "plaintext-private-key")
        #expect(rows["configmaps/plain"]?.state == "plaintext")
        #expect(rows["secrets/s-0000"]?.state == "current")
        #expect(both.stdout.contains("\"resources\": [\"secrets\", \"configmaps\"]"))
        #expect(!both.stdout.contains(Self.marker))
        let refused = try world.plugin.run(["destroy", first, "--audit-json", try save(world, both.stdout)] + world.plugin.tokenArguments)
        #expect(refused.status == 1 && refused.stderr.contains("still stored under \(first), e.g. configmaps org1/peer-config"), "\(refused.stderr)")

        let table = try world.cli(["--resources", "secrets,configmaps"])
        #expect(table.stdout.contains("Objects (secrets, configmaps)") && table.stdout.contains("RESOURCE"), "\(table.stdout)")
        let wildcard = try world.cli(["--resources", "*.*"])
        #expect(wildcard.status == 2 && wildcard.stderr.contains("wildcards are not supported"), "\(wildcard.stderr)")
    }

    /// One KMS v2 Secret named exactly `name` (writeSecrets numbers its names).
    func put(_ world: AuditWorld, _ namespace: String, _ name: String, state: KMSv2WriteState) throws {
        let key = APIServerWriter.key(namespace: namespace, name: name)
        try world.put(key, try state.value(etcdKey: key, plaintext: AuditWorld.plaintext(namespace, name)))
    }

    func save(_ world: AuditWorld, _ text: String) throws -> String {
        let path = world.etcd.directory.appendingPathComponent("audit-\(UUID().uuidString).json").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}

import EtcdAudit
import Foundation
import Testing
import TestSupport

/// `p11kms audit` against a real etcd holding Secrets written as kube-apiserver 1.29+ writes them, with a real
/// plugin on a SoftHSM token as the source of truth.
@Suite(.serialized) struct AuditEndToEndTests {
    static let foreignKeyID = "p11kms-" + String(repeating: "ab", count: 16)

    /// Every state, keys outside `secrets/`, several pages.
    @Test func everyState() throws {
        let world = try AuditWorld(name: "audit-states")
        let oldKey = world.plugin.initialKeyID
        let old = try world.kmsV2State()
        #expect(old.keyID == oldKey)
        // Seen first in key order: a damaged DEK under the old (still held) key must not condemn that key.
        let damaged = KMSv2WriteState(provider: AuditWorld.provider, keyID: oldKey,
                                      encryptedDEKSource: Data(APIServerWriter.random(old.encryptedDEKSource.count)))
        try world.writeSecrets(1, namespace: "a-first", name: "damaged", state: damaged)
        try world.writeSecrets(300, namespace: "fabric-org1", state: old)
        try world.writeSecrets(20, namespace: "legacy", state: try world.kmsV2State(sourceType: .aesGCMKey))

        let newKey = try world.rotate()
        #expect(newKey != oldKey)
        try world.writeSecrets(700, namespace: "fabric-org2", state: try world.kmsV2State())
        try world.writeSecrets(500, namespace: "fabric-org2", name: "t", state: try world.kmsV2State())

        try world.writeSecrets(4, namespace: "moved", state: KMSv2WriteState(
            provider: AuditWorld.provider, keyID: Self.foreignKeyID, encryptedDEKSource: Data(APIServerWriter.random(60))))
        try world.writeSecrets(2, namespace: "other", name: "v2", state: try world.kmsV2State(provider: "vault"))
        let pluginClient = try world.plugin.client()
        let v1Key = APIServerWriter.key(namespace: "other", name: "v1")
        try world.put(v1Key, try APIServerWriter.kmsV1(provider: "vault", etcdKey: v1Key, plaintext: AuditWorld.plaintext("other", "v1")) {
            Array(try pluginClient.v1Encrypt($0))
        })
        for i in 0..<2 {
            let key = APIServerWriter.key(namespace: "old-v1", name: "s\(i)")
            try world.put(key, try APIServerWriter.kmsV1(provider: AuditWorld.provider, etcdKey: key, plaintext: AuditWorld.plaintext("old-v1", "s\(i)")) {
                Array(try pluginClient.v1Encrypt($0))
            })
        }
        let local = APIServerWriter.key(namespace: "local", name: "gcm")
        try world.put(local, try APIServerWriter.aesgcm(keyName: "key1", key: .init(size: .bits256), etcdKey: local,
                                                       plaintext: AuditWorld.plaintext("local", "gcm")))
        try world.put(APIServerWriter.key(namespace: "local", name: "cbc"), APIServerWriter.aescbcShape(keyName: "key2", plaintextCount: 200))
        try world.put(APIServerWriter.key(namespace: "local", name: "box"), APIServerWriter.secretboxShape(keyName: "key3", plaintextCount: 200))
        try world.put(APIServerWriter.key(namespace: "broken", name: "garbage"), Array("k8s:enc:kms:v2:hsm:".utf8) + [0xff, 0xfe, 0x01])
        try world.put(APIServerWriter.key(namespace: "broken", name: "empty"), Array("k8s:enc:kms:v2:hsm:".utf8))
        for i in 0..<3 {
            try world.put(APIServerWriter.key(namespace: "default", name: "plain\(i)"), AuditWorld.plaintext("default", "plain\(i)"))
        }
        try world.put(APIServerWriter.key(namespace: "default", name: "json"), APIServerWriter.secretJSON(namespace: "default", name: "json", data: ["a": [1]]))
        // Not Secrets: must be ignored.
        try world.put("/registry/configmaps/default/cm", AuditWorld.plaintext("default", "cm"))
        try world.put("/registry/secretsx/default/s", AuditWorld.plaintext("default", "s"))
        try world.put("/registry/secrets", AuditWorld.plaintext("default", "s"))
        try world.put("/other/secrets/default/s", AuditWorld.plaintext("default", "s"))

        let report = try world.audit()
        #expect(report.total == 1 + 300 + 20 + 1200 + 4 + 3 + 2 + 3 + 2 + 4)
        #expect(report.count(.current) == 1200)
        #expect(report.count(.stale) == 321)
        #expect(report.count(.unknownKey) == 4)
        #expect(report.count(.otherProvider) == 3)
        #expect(report.count(.kmsV1) == 2)
        #expect(report.count(.localKey) == 3)
        #expect(report.count(.undecodable) == 2)
        // The three protobuf ones hold a PEM private key in tls.key; the JSON one does not.
        #expect(report.count(.plaintextPrivateKey) == 3)
        #expect(report.count(.plaintext) == 1)
        #expect(report.plugin.keyID == newKey)
        #expect(report.exitStatus == 1)

        #expect(report.secret("fabric-org2", "s-0000") == AuditedSecret(namespace: "fabric-org2", name: "s-0000", state: .current,
                                                                        provider: "hsm", keyID: newKey))
        #expect(report.secret("a-first", "damaged-0000")?.state == .stale)
        #expect(report.secret("fabric-org1", "s-0299")?.keyID == oldKey)
        #expect(report.secret("legacy", "s-0000")?.state == .stale)
        let moved = try #require(report.secret("moved", "s-0000"))
        #expect(moved.state == .unknownKey && moved.keyID == Self.foreignKeyID && moved.provider == "hsm")
        #expect(report.secret("other", "v2-0000")?.provider == "vault")
        #expect(report.secret("other", "v2-0000")?.keyID == newKey)
        // KMS v1 values name their root key through the p11kms envelope inside, whatever the provider name.
        #expect(report.secret("other", "v1") == AuditedSecret(namespace: "other", name: "v1", state: .otherProvider, provider: "vault", keyID: newKey))
        #expect(report.secret("old-v1", "s0") == AuditedSecret(namespace: "old-v1", name: "s0", state: .kmsV1, provider: "hsm", keyID: newKey))
        #expect(report.secret("default", "plain0")?.detail == "tls.key: PEM private key")
        #expect(report.secret("local", "gcm") == AuditedSecret(namespace: "local", name: "gcm", state: .localKey, provider: "aesgcm", keyID: "key1"))
        #expect(report.secret("local", "cbc")?.provider == "aescbc")
        #expect(report.secret("local", "box")?.provider == "secretbox")
        #expect(report.secret("default", "json")?.state == .plaintext)
        #expect(report.secret("broken", "empty")?.state == .undecodable)
        #expect(report.secrets.map { "\($0.namespace)/\($0.name)" } == report.secrets.map { "\($0.namespace)/\($0.name)" }.sorted())

        let keys = Dictionary(uniqueKeysWithValues: report.keys.map { ($0.keyID, $0) })
        #expect(keys[newKey]?.status == .current)
        #expect(keys[newKey]?.deks == 2)
        #expect(keys[oldKey]?.status == .held)
        #expect(keys[oldKey]?.deks == 3)
        guard case .notHeld(let reason)? = keys[Self.foreignKeyID]?.status else {
            Issue.record("foreign key: \(String(describing: keys[Self.foreignKeyID]))")
            return
        }
        #expect(!reason.isEmpty)

        // The same through the command line, as JSON.
        let cli = try world.cli(["--format", "json", "--page-size", "100", "--verify"])
        #expect(cli.status == 1, "\(cli.stderr)")
        let json = try AuditJSON(cli.stdout)
        #expect(json.summary.total == report.total)
        #expect(Set(json.summary.by_state.keys) == Set(SecretState.allCases.map(\.rawValue)))
        for state in SecretState.allCases { #expect(json.summary.by_state[state.rawValue] == report.count(state)) }
        #expect(json.secrets.count == report.total)
        let plain = try #require(json.secrets.first { $0.name == "plain0" })
        #expect(plain.state == "plaintext-private-key" && plain.provider == "" && plain.key_id == "" && plain.namespace == "default")
        #expect(json.secrets.first { $0.name == "json" }?.state == "plaintext")
        let verify = try #require(json.verify)
        #expect(verify.checked == 1 + 1 + 1 + 2 + 1)  // damaged, old, legacy, two current seeds, foreign
        #expect(Set(verify.failed.map(\.key_id)) == [oldKey, Self.foreignKeyID])
        #expect(verify.failed.first { $0.key_id == oldKey }?.secrets == ["a-first/damaged-0000"])
        #expect(verify.failed.first { $0.key_id == Self.foreignKeyID }?.secrets.count == 4)
        // Plaintexts are never printed.
        #expect(!cli.stdout.contains("PRIVATE KEY") && !cli.stderr.contains("PRIVATE KEY"))

        // Namespace filter: only current Secrets there.
        let org2 = try world.cli(["--namespace", "fabric-org2"])
        #expect(org2.status == 0, "\(org2.stdout)\(org2.stderr)")
        #expect(org2.stdout.contains("OK: every Secret is current."))
        let two = try world.audit(AuditOptions(provider: AuditWorld.provider, namespaces: ["default", "local", "default"], pageSize: 2))
        #expect(two.total == 7)
        #expect(Set(two.secrets.map(\.namespace)) == ["default", "local"])

        let table = try world.cli(["--list", "5"])
        #expect(table.status == 1)
        for needle in ["current", "1200", "stale", "321", "unknown-key", "fabric-org1", "not held", "NOT OK", "... and"] {
            #expect(table.stdout.contains(needle), "table lacks \(needle):\n\(table.stdout)")
        }
    }

    /// Rotation makes Secrets stale, re-writing makes them current, retiring the old key makes --verify fail for
    /// Secrets still under it.
    @Test func rotationLifecycle() throws {
        let world = try AuditWorld(name: "audit-rotation")
        let first = world.plugin.initialKeyID
        let keys = try world.writeSecrets(60, namespace: "org1", state: try world.kmsV2State())
        var report = try world.audit()
        #expect(report.count(.current) == 60 && report.exitStatus == 0)
        #expect(try world.cli([]).status == 0)

        let second = try world.rotate()
        report = try world.audit()
        #expect(report.count(.stale) == 60 && report.exitStatus == 1)
        #expect(report.keys.first?.keyID == first && report.keys.first?.status == .held)
        let verified = try world.audit(AuditOptions(provider: AuditWorld.provider, verify: true))
        #expect(verified.verification?.checked == 1 && verified.verification?.failures.isEmpty == true)
        #expect(verified.count(.stale) == 60)

        // The apiserver re-writes 50 of them (kubectl replace) under its new seed.
        let fresh = try world.kmsV2State()
        #expect(fresh.keyID == second)
        try world.putAll(try keys.prefix(50).map { key in
            let parts = key.split(separator: "/")
            return (key, try fresh.value(etcdKey: key, plaintext: AuditWorld.plaintext(String(parts[2]), String(parts[3]))))
        })
        report = try world.audit()
        #expect(report.count(.current) == 50 && report.count(.stale) == 10)

        try world.retire(first)
        let retired = try world.audit(AuditOptions(provider: AuditWorld.provider, verify: true))
        #expect(retired.count(.current) == 50)
        #expect(retired.count(.unknownKey) == 10)
        let failure = try #require(retired.verification?.failures.first)
        #expect(retired.verification?.failures.count == 1)
        #expect(failure.keyID == first)
        #expect(failure.secrets == keys.suffix(10).map { $0.replacingOccurrences(of: "/registry/secrets/", with: "") })
        #expect(failure.message.contains("retired"), "\(failure.message)")
        let cli = try world.cli(["--verify"])
        #expect(cli.status == 1)
        #expect(cli.stdout.contains("cannot be unwrapped"), "\(cli.stdout)")

        // Re-write the rest: everything current and verified.
        try world.writeSecrets(0, namespace: "org1", state: fresh)
        try world.putAll(try keys.suffix(10).map { key in
            let parts = key.split(separator: "/")
            return (key, try fresh.value(etcdKey: key, plaintext: AuditWorld.plaintext(String(parts[2]), String(parts[3]))))
        })
        let done = try world.cli(["--verify", "--format", "json"])
        #expect(done.status == 0, "\(done.stdout)\(done.stderr)")
        let json = try AuditJSON(done.stdout)
        #expect(json.summary.by_state["current"] == 60 && json.verify?.failed.isEmpty == true)
    }
}

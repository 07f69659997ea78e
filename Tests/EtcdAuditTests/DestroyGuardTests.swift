import EtcdAudit
import Foundation
import Testing
import TestSupport

/// `p11kms destroy --audit-json` against audits of a real etcd made by the real binary: KMS v1 values block it, and
/// an audit that was scoped, is too old, found nothing or cannot tell a value's key is refused.
@Suite(.serialized) struct DestroyGuardTests {
    /// Runs `p11kms audit --format json` and saves its output; returns the path.
    func saveAudit(_ world: AuditWorld, _ extra: [String] = [], name: String = "audit.json") throws -> String {
        let result = try world.cli(["--format", "json"] + extra)
        #expect(result.status == 0 || result.status == 1, "\(result.stderr)")
        let path = world.etcd.directory.appendingPathComponent(name).path
        try result.stdout.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func destroy(_ world: AuditWorld, _ keyID: String, audit: String, _ extra: [String] = [],
                 environment: [String: String] = [:]) throws -> Command.Result {
        try world.plugin.run(["destroy", keyID, "--audit-json", audit] + extra + world.plugin.tokenArguments, environment: environment)
    }

    func writeV1(_ world: AuditWorld, namespace: String, name: String, wrap: ([UInt8]) throws -> [UInt8]) throws {
        let key = APIServerWriter.key(namespace: namespace, name: name)
        try world.put(key, try APIServerWriter.kmsV1(provider: AuditWorld.provider, etcdKey: key,
                                                     plaintext: AuditWorld.plaintext(namespace, name), wrap: wrap))
    }

    @Test func kmsV1ValuesCarryTheirKeyAndBlockDestroy() throws {
        let world = try AuditWorld(name: "guard-v1")
        let first = world.plugin.initialKeyID
        let client = try world.plugin.client()
        for i in 0..<2 { try writeV1(world, namespace: "v1", name: "s\(i)") { Array(try client.v1Encrypt($0)) } }
        let second = try world.rotate()
        let keys = try world.writeSecrets(3, namespace: "org1", state: try world.kmsV2State())
        try world.retire(first)

        let path = try saveAudit(world)
        let json = try AuditJSON(String(contentsOfFile: path, encoding: .utf8))
        #expect(json.secrets.filter { $0.state == "kms-v1" }.map(\.key_id) == [first, first])
        let refused = try destroy(world, first, audit: path, ["--yes-destroy-forever"])
        #expect(refused.status == 1, "\(refused.stderr)")
        #expect(refused.stderr.contains("not destroyed") && refused.stderr.contains("2 value(s) still stored under \(first), e.g. v1/s0, v1/s1"),
                "\(refused.stderr)")

        // A v1 value of this provider whose DEK is not a p11kms envelope: its key cannot be told, and that blocks too.
        try world.etcdClient.deletePrefix(Array("/registry/secrets/v1/".utf8))
        try writeV1(world, namespace: "v1", name: "foreign") { _ in APIServerWriter.random(80) }
        let untold = try destroy(world, first, audit: try saveAudit(world, name: "untold.json"), ["--yes-destroy-forever"])
        #expect(untold.status == 1, "\(untold.stderr)")
        #expect(untold.stderr.contains("whose key it cannot tell, e.g. v1/foreign (kms-v1)"), "\(untold.stderr)")

        // Rewritten under the current key as KMS v2: the audit proves the old key unused, and it is destroyed.
        try world.etcdClient.deletePrefix(Array("/registry/secrets/v1/".utf8))
        let done = try destroy(world, first, audit: try saveAudit(world, ["--verify"], name: "done.json"), ["--yes-destroy-forever"])
        #expect(done.status == 0, "\(done.stderr)")
        #expect(done.stderr.contains("shows nothing under \(first) (3 values audited)") && done.stderr.contains("destroyed \(first)"),
                "\(done.stderr)")
        let listed = try world.plugin.run(["keys", "--format", "json"] + world.plugin.tokenArguments)
        #expect(!listed.stdout.contains(first) && listed.stdout.contains(second), "\(listed.stdout)")
        #expect(keys.count == 3)
    }

    @Test func scopedOldEmptyAndOldFormatAuditsAreRefused() throws {
        let world = try AuditWorld(name: "guard-scope")
        try world.writeSecrets(3, namespace: "org1", name: "peer0-tls", state: try world.kmsV2State())
        try world.writeSecrets(2, namespace: "org2", state: try world.kmsV2State())
        // Never stored anywhere: the guard passes and only the missing confirmation stops the destroy.
        let unused = "p11kms-" + String(repeating: "5a", count: 16)
        let full = try saveAudit(world)
        let passes = try destroy(world, unused, audit: full)
        #expect(passes.status == 2 && passes.stderr.contains("shows nothing under \(unused) (5 values audited)")
                && passes.stderr.contains("add --yes-destroy-forever"), "\(passes.stderr)")

        let cases: [(String, [String], String)] = [
            ("namespace", ["--namespace", "org1"], "it was limited to namespace(s) org1: audit every namespace"),
            ("fabric", ["--fabric"], "it was limited by --fabric"),
            ("prefix", ["--prefix", "/elsewhere"], "it read etcd prefix /elsewhere/, not /registry/"),
            ("prefix finds nothing", ["--prefix", "/elsewhere"], "it found nothing under /elsewhere/"),
            ("no secrets", ["--resources", "configmaps"], "it did not cover secrets"),
        ]
        for (label, arguments, message) in cases {
            let result = try destroy(world, unused, audit: try saveAudit(world, arguments, name: "\(label).json"))
            #expect(result.status == 1, "\(label): \(result.stderr)")
            #expect(result.stderr.contains("does not prove \(unused) unused") && result.stderr.contains(message), "\(label): \(result.stderr)")
        }

        // Two hours old: refused under the default bound of one hour, accepted with a longer one (flag or environment).
        var text = try String(contentsOfFile: full, encoding: .utf8)
        let time = try #require(text.firstMatch(of: /"time": "([^"]+)"/)).1
        text = text.replacingOccurrences(of: "\"time\": \"\(time)\"",
                                         with: "\"time\": \"\(AuditReport.rfc3339(Date().addingTimeInterval(-7200)))\"")
        let old = world.etcd.directory.appendingPathComponent("old.json").path
        try text.write(toFile: old, atomically: true, encoding: .utf8)
        let tooOld = try destroy(world, unused, audit: old)
        #expect(tooOld.status == 1 && tooOld.stderr.contains("it is 2h old, more than --audit-max-age 1h"), "\(tooOld.stderr)")
        #expect(try destroy(world, unused, audit: old, ["--audit-max-age", "3h"]).status == 2)
        #expect(try destroy(world, unused, audit: old, environment: ["P11KMS_AUDIT_MAX_AGE": "10800"]).status == 2)
        let badAge = try destroy(world, unused, audit: old, ["--audit-max-age", "soon"])
        #expect(badAge.status == 2 && badAge.stderr.contains("audit-max-age must be a positive duration"), "\(badAge.stderr)")

        // The apiserver's prefix is the caller's to state.
        let otherPrefix = try destroy(world, unused, audit: full, ["--etcd-prefix", "/other"])
        #expect(otherPrefix.status == 1 && otherPrefix.stderr.contains("not /other/"), "\(otherPrefix.stderr)")

        // An audit in the format that recorded no scope.
        let legacy = world.etcd.directory.appendingPathComponent("legacy.json").path
        try #"{"summary": {"total": 1, "by_state": {}}, "secrets": [{"namespace": "a", "name": "b", "state": "current", "provider": "hsm", "key_id": "k"}]}"#
            .write(toFile: legacy, atomically: true, encoding: .utf8)
        let noScope = try destroy(world, unused, audit: legacy)
        #expect(noScope.status == 1 && noScope.stderr.contains("records no scope"), "\(noScope.stderr)")
        let garbage = try destroy(world, unused, audit: world.etcd.directory.appendingPathComponent("etcd.log").path)
        #expect(garbage.status == 2 && garbage.stderr.contains("not the JSON output of 'p11kms audit --format json'"), "\(garbage.stderr)")

        // An empty etcd: the audit itself is all current (exit 0) but proves nothing.
        try world.etcdClient.deletePrefix(Array("/registry/".utf8))
        let empty = try world.cli(["--format", "json"])
        #expect(empty.status == 0)
        let emptyPath = world.etcd.directory.appendingPathComponent("empty.json").path
        try empty.stdout.write(toFile: emptyPath, atomically: true, encoding: .utf8)
        let nothing = try destroy(world, unused, audit: emptyPath)
        #expect(nothing.status == 1 && nothing.stderr.contains("it found nothing under /registry/"), "\(nothing.stderr)")
    }
}

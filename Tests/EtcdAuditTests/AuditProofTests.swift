import Foundation
import Testing
@testable import EtcdAudit

/// The destroy guard's rules on the audit JSON, as a pure function (the end-to-end tests run the real commands).
@Suite struct AuditProofTests {
    static let key = "p11kms-" + String(repeating: "0a", count: 16)
    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    static func report(secrets: [AuditedSecret], namespaces: [String] = [], nameFilter: String = "", prefix: String = "/registry/",
                       resources: [String] = ["secrets"], time: Date = now, verify: Verification? = nil) -> Data {
        let scope = AuditScope(provider: "hsm", etcdPrefix: prefix, resources: resources, namespaces: namespaces,
                               nameFilter: nameFilter, prefixes: [prefix + "secrets/"], revision: 42, time: time)
        let report = AuditReport(provider: "hsm", scannedPrefixes: scope.prefixes, revision: 42,
                                 plugin: PluginStatus(version: "v2", healthz: "ok", keyID: "p11kms-current"),
                                 secrets: secrets, keys: [], verification: verify, scanSeconds: 0, scope: scope)
        return Data(report.renderJSON().utf8)
    }

    static let current = AuditedSecret(namespace: "a", name: "s", state: .current, provider: "hsm", keyID: "p11kms-current")

    func refusals(_ json: Data, maxAge: Double = 3600, prefix: String = "/registry") throws -> [String] {
        try AuditProof.parse(json).refusals(keyID: Self.key, now: Self.now, maxAge: maxAge, etcdPrefix: prefix)
    }

    @Test func aCompleteFreshAuditWithoutTheKeyPasses() throws {
        let json = Self.report(secrets: [Self.current, AuditedSecret(namespace: "b", name: "p", state: .plaintext)])
        #expect(try refusals(json).isEmpty)
        let proof = try AuditProof.parse(json)
        #expect(proof.total == 2 && proof.scope?.revision == 42 && proof.scope?.time == "2027-01-15T08:00:00Z")
    }

    @Test func eachHoleIsRefused() throws {
        let cases: [(String, Data, String)] = [
            ("namespaced", Self.report(secrets: [Self.current], namespaces: ["org1"]), "limited to namespace(s) org1"),
            ("fabric", Self.report(secrets: [Self.current], nameFilter: "fabric"), "limited by --fabric"),
            ("prefix", Self.report(secrets: [Self.current], prefix: "/other/"), "etcd prefix /other/"),
            ("no secrets", Self.report(secrets: [Self.current], resources: ["configmaps"]), "did not cover secrets"),
            ("old", Self.report(secrets: [Self.current], time: Self.now.addingTimeInterval(-3601)), "more than --audit-max-age 1h"),
            ("future", Self.report(secrets: [Self.current], time: Self.now.addingTimeInterval(3600)), "in the future"),
            ("empty", Self.report(secrets: []), "found nothing"),
            ("v2 under the key", Self.report(secrets: [AuditedSecret(namespace: "a", name: "x", state: .stale, provider: "hsm", keyID: Self.key)]),
             "1 value(s) still stored under \(Self.key), e.g. a/x"),
            ("v1 under the key", Self.report(secrets: [AuditedSecret(namespace: "a", name: "v", state: .kmsV1, provider: "hsm", keyID: Self.key)]),
             "still stored under"),
            ("other provider under the key", Self.report(secrets: [AuditedSecret(namespace: "a", name: "o", state: .otherProvider, provider: "old", keyID: Self.key)]),
             "still stored under"),
            ("configmap under the key", Self.report(secrets: [AuditedSecret(namespace: "a", name: "c", state: .stale, provider: "hsm", keyID: Self.key, resource: "configmaps")],
                                                   resources: ["secrets", "configmaps"]), "configmaps a/c"),
            ("v1 key untold", Self.report(secrets: [AuditedSecret(namespace: "a", name: "v", state: .kmsV1, provider: "hsm", detail: "not a p11kms envelope")]),
             "whose key it cannot tell, e.g. a/v (kms-v1)"),
            ("undecodable own", Self.report(secrets: [AuditedSecret(namespace: "a", name: "u", state: .undecodable, provider: "hsm")]),
             "cannot tell"),
            ("verify failed", Self.report(secrets: [Self.current], verify: Verification(checked: 1, failures: [
                .init(keyID: "p11kms-x", message: "retired", secrets: ["a/s"])])), "could not unwrap 1 data key"),
        ]
        for (label, json, needle) in cases {
            let found = try refusals(json)
            #expect(found.count == 1, "\(label): \(found)")
            #expect(found.joined().contains(needle), "\(label): \(found)")
        }
        // The bound and the prefix are the caller's.
        #expect(try refusals(Self.report(secrets: [Self.current], time: Self.now.addingTimeInterval(-7200)), maxAge: 7201).isEmpty)
        #expect(try refusals(Self.report(secrets: [Self.current], prefix: "/other/"), prefix: "other").isEmpty)
    }

    @Test func oldFormatAndGarbage() throws {
        let old = Data(#"{"summary": {"total": 1, "by_state": {}}, "secrets": [{"namespace": "a", "name": "b", "state": "current", "provider": "hsm", "key_id": "k"}]}"#.utf8)
        #expect(try refusals(old).first?.contains("records no scope") == true)
        for (bytes, needle) in [(Data("nope".utf8), "not valid JSON"), (Data("{}".utf8), "no \"summary\""),
                                (Data(#"{"summary": {"total": "x"}, "secrets": []}"#.utf8), "wrong type")] {
            #expect { try AuditProof.parse(bytes) } throws: { error in
                ((error as? AuditProofError)?.message ?? "").contains(needle)
            }
        }
    }

    /// Truncated and byte-flipped audits parse or fail with a message; never a crash.
    @Test func damagedDocuments() {
        let json = Array(Self.report(secrets: [Self.current]))
        var generator = SystemRandomNumberGenerator()
        for cut in stride(from: 0, to: json.count - 2, by: 7) {  // "}\n" ends it: shorter cuts lose the "}"
            #expect((try? AuditProof.parse(Data(json[..<cut]))) == nil, "a truncated audit parsed at \(cut)")
        }
        for _ in 0..<500 {
            var bytes = json
            bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            if let proof = try? AuditProof.parse(Data(bytes)) {
                _ = proof.refusals(keyID: Self.key, now: Self.now, maxAge: 3600)
            }
        }
    }

    @Test func durations() {
        #expect(AuditProof.parseDuration("3600") == 3600)
        #expect(AuditProof.parseDuration("1h") == 3600)
        #expect(AuditProof.parseDuration("2h30m") == 9000)
        #expect(AuditProof.parseDuration("90s") == 90)
        #expect(AuditProof.parseDuration("1d") == 86400)
        for bad in ["", "0", "-5", "1x", "h", "1h5", "nan"] { #expect(AuditProof.parseDuration(bad) == nil, "\(bad)") }
    }
}

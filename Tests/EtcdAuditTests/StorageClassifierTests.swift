import Foundation
import KMSProto
import SwiftProtobuf
import Testing
import TestSupport
@testable import EtcdAudit

@Suite struct StorageClassifierTests {
    let classifier = StorageClassifier(provider: "hsm")
    let key = APIServerWriter.key(namespace: "org1", name: "peer0-tls")
    let plaintext = APIServerWriter.secretProtobuf(namespace: "org1", name: "peer0-tls", data: ["tls.key": Array("k".utf8)])

    func state(_ keyID: String = "p11kms-00112233445566778899aabbccddeeff", provider: String = "hsm",
               type: KMSv2WriteState.SourceType = .seed) -> KMSv2WriteState {
        KMSv2WriteState(provider: provider, sourceType: type, keyID: keyID,
                        encryptedDEKSource: Data(APIServerWriter.random(60)), annotations: ["version.p11kms.io": Data("1".utf8)])
    }

    @Test func plaintextProtobufAndJSON() {
        #expect(classifier.format(of: Data(plaintext)) == .plaintext(.protobuf))
        let json = APIServerWriter.secretJSON(namespace: "a", name: "b", data: ["k": [1]])
        #expect(classifier.format(of: Data(json)) == .plaintext(.json))
        #expect(classifier.format(of: Data("apiVersion: v1\nkind: Secret\n".utf8)) == .plaintext(.yaml))
    }

    @Test(arguments: [KMSv2WriteState.SourceType.seed, .aesGCMKey])
    func ownKMSv2(type: KMSv2WriteState.SourceType) throws {
        let writer = state(type: type)
        let value = try writer.value(etcdKey: key, plaintext: plaintext)
        guard case .kmsV2(let provider, let envelope) = classifier.format(of: Data(value)) else {
            Issue.record("not KMS v2: \(classifier.format(of: Data(value)))")
            return
        }
        #expect(provider == "hsm")
        #expect(envelope.keyID == writer.keyID)
        #expect(envelope.dek.ciphertext == writer.encryptedDEKSource)
        #expect(envelope.dek.annotations == writer.annotations)
        #expect(envelope.dek.sourceType == (type == .seed ? .hkdfSHA256XNonceAESGCMSeed : .aesGCMKey))
    }

    @Test func twoWritesShareOneDEK() throws {
        let writer = state()
        let a = try writer.value(etcdKey: key, plaintext: plaintext)
        let b = try writer.value(etcdKey: key + "x", plaintext: plaintext)
        #expect(a != b)
        guard case .kmsV2(_, let ea) = classifier.format(of: Data(a)), case .kmsV2(_, let eb) = classifier.format(of: Data(b)) else {
            Issue.record("not KMS v2")
            return
        }
        #expect(ea.dek == eb.dek)
    }

    @Test func providerNamesAreMatchedExactly() throws {
        let other = try state(provider: "hsm2").value(etcdKey: key, plaintext: plaintext)
        guard case .kmsV2(let provider, _) = classifier.format(of: Data(other)) else {
            Issue.record("not KMS v2")
            return
        }
        #expect(provider == "hsm2")
        // "hs" is a prefix of "hsm2" but not the same provider.
        guard case .kmsV2(let seenByHS, _) = StorageClassifier(provider: "hs").format(of: Data(other)) else {
            Issue.record("not KMS v2")
            return
        }
        #expect(seenByHS == "hsm2")
    }

    @Test func kmsV1() throws {
        let own = try APIServerWriter.kmsV1(provider: "hsm", etcdKey: key, plaintext: plaintext) { _ in APIServerWriter.random(80) }
        #expect(classifier.format(of: Data(own)) == .kmsV1(provider: "hsm", body: KMSv1Body(
            keyID: "", problem: "KMS v1 encrypted DEK is not a p11kms envelope")))
        let other = try APIServerWriter.kmsV1(provider: "vault", etcdKey: key, plaintext: plaintext) { _ in [1, 2, 3] }
        guard case .kmsV1(let provider, _) = classifier.format(of: Data(other)) else {
            Issue.record("not KMS v1: \(classifier.format(of: Data(other)))")
            return
        }
        #expect(provider == "vault")
    }

    @Test func localKeys() throws {
        let gcm = try APIServerWriter.aesgcm(keyName: "key1", key: .init(size: .bits256), etcdKey: key, plaintext: plaintext)
        #expect(classifier.format(of: Data(gcm)) == .local(.aesgcm, keyName: "key1"))
        let cbc = APIServerWriter.aescbcShape(keyName: "k2", plaintextCount: plaintext.count)
        #expect(classifier.format(of: Data(cbc)) == .local(.aescbc, keyName: "k2"))
        let box = APIServerWriter.secretboxShape(keyName: "k3", plaintextCount: plaintext.count)
        #expect(classifier.format(of: Data(box)) == .local(.secretbox, keyName: "k3"))
    }

    static let brokenEnvelopes: [(String, [UInt8])] = [
        ("not protobuf", [0xff, 0xff, 0xff]),
        ("empty", []),
        ("truncated", Array(try! StorageClassifierTests().state().value(etcdKey: "/k", plaintext: [1, 2, 3]).dropFirst("k8s:enc:kms:v2:hsm:".count).dropLast(5))),
    ]

    @Test func undecodableOwnEnvelopes() throws {
        let prefix = Array("k8s:enc:kms:v2:hsm:".utf8)
        for (label, body) in Self.brokenEnvelopes {
            guard case .kmsV2Undecodable(let provider, _) = classifier.format(of: Data(prefix + body)) else {
                Issue.record("\(label): \(classifier.format(of: Data(prefix + body)))")
                continue
            }
            #expect(provider == "hsm")
        }
        // Parses, but breaks the apiserver's validation rules.
        var object = try state().encryptedObject(etcdKey: key, plaintext: plaintext)
        let mutations: [(String, (inout V2_EncryptedObject) -> Void)] = [
            ("no keyID", { $0.keyID = "" }),
            ("long keyID", { $0.keyID = String(repeating: "k", count: 1025) }),
            ("no DEK", { $0.encryptedDeksource = Data() }),
            ("long DEK", { $0.encryptedDeksource = Data(count: 1025) }),
            ("no data", { $0.encryptedData = Data() }),
            ("short data", { $0.encryptedData = Data(count: 40) }),
            ("bad annotation", { $0.annotations = ["NotADomain": Data()] }),
            ("unknown type", { $0.encryptedDeksourceType = .UNRECOGNIZED(7) }),
        ]
        for (label, mutate) in mutations {
            var broken = object
            mutate(&broken)
            let value = prefix + (try broken.serializedBytes() as [UInt8])
            guard case .kmsV2Undecodable = classifier.format(of: Data(value)) else {
                Issue.record("\(label): \(classifier.format(of: Data(value)))")
                continue
            }
        }
        object.annotations = ["a.example.com": Data(count: 10)]
        let fine = prefix + (try object.serializedBytes() as [UInt8])
        guard case .kmsV2 = classifier.format(of: Data(fine)) else {
            Issue.record("valid object rejected")
            return
        }
    }

    @Test func unrecognizedValues() {
        for value in ["", "hello", "k8s:enc:identity:v1:x:", "k8s:enc:kms:v2:", "k8s:enc:aesgcm:v1:nokey"] {
            guard case .unrecognized = classifier.format(of: Data(value.utf8)) else {
                Issue.record("\(value): \(classifier.format(of: Data(value.utf8)))")
                continue
            }
        }
    }

    @Test func fullyQualifiedDomainNames() {
        for good in ["a.b", "version.p11kms.io", "x-1.example.com.", "1.2"] {
            #expect(KMSv2Limits.isFullyQualifiedDomainName(good), "\(good)")
        }
        for bad in ["a", "A.b", "-a.b", "a-.b", "a..b", "", ".", "a_b.c", String(repeating: "a", count: 64) + ".b"] {
            #expect(!KMSv2Limits.isFullyQualifiedDomainName(bad), "\(bad)")
        }
    }
}

@Suite struct EtcdKeysTests {
    @Test func prefixes() {
        #expect(EtcdKeys.normalizedPrefix("/registry") == "/registry/")
        #expect(EtcdKeys.normalizedPrefix("registry/") == "/registry/")
        #expect(EtcdKeys.normalizedPrefix("/") == "/")
        #expect(String(decoding: EtcdKeys.secretsPrefix(etcdPrefix: "/registry"), as: UTF8.self) == "/registry/secrets/")
        #expect(String(decoding: EtcdKeys.secretsPrefix(etcdPrefix: "/r", namespace: "ns"), as: UTF8.self) == "/r/secrets/ns/")
    }

    @Test func prefixEnd() {
        #expect(EtcdKeys.prefixEnd(Array("/a/".utf8)) == Array("/a0".utf8))
        #expect(EtcdKeys.prefixEnd([0x61, 0xff, 0xff]) == [0x62])
        #expect(EtcdKeys.prefixEnd([0xff, 0xff]) == [0])
    }

    @Test func secretNames() {
        func parse(_ key: String) -> [String]? {
            Array(key.utf8).withUnsafeBufferPointer { EtcdKeys.secretName(key: $0, secretsPrefixLength: "/registry/secrets/".count) }
                .map { [$0.namespace, $0.name] }
        }
        #expect(parse("/registry/secrets/ns/name") == ["ns", "name"])
        #expect(parse("/registry/secrets/ns/") == nil)
        #expect(parse("/registry/secrets/ns") == nil)
        #expect(parse("/registry/secrets//name") == nil)
        #expect(parse("/registry/secrets/ns/a/b") == nil)
    }

    @Test func resourceTypes() throws {
        func path(_ name: String) throws -> String {
            String(decoding: EtcdKeys.resourcePrefix(etcdPrefix: "/registry", resource: try ResourceType(parsing: name)), as: UTF8.self)
        }
        #expect(try path("secrets") == "/registry/secrets/")
        #expect(try path("configmaps") == "/registry/configmaps/")
        #expect(try path("deployments.apps") == "/registry/deployments/")
        #expect(try path("ingresses.networking.k8s.io") == "/registry/ingress/")
        #expect(try path("services") == "/registry/services/specs/")
        #expect(try path("widgets.example.com") == "/registry/example.com/widgets/")
        #expect(try ResourceType.list(["secrets", "configmaps", "secrets"]).map(\.name) == ["secrets", "configmaps"])
        for bad in ["*.*", "*.apps", "Secrets", "", "a..b", "a/b"] {
            #expect(throws: AuditError.self, "\(bad)") { try ResourceType(parsing: bad) }
        }
        func parse(_ key: String) -> [String]? {
            Array(key.utf8).withUnsafeBufferPointer {
                EtcdKeys.objectName(key: $0, prefixLength: "/registry/example.com/widgets/".count, clusterScoped: true)
            }.map { [$0.namespace, $0.name] }
        }
        #expect(parse("/registry/example.com/widgets/ns/w") == ["ns", "w"])
        #expect(parse("/registry/example.com/widgets/global") == ["", "global"])
        #expect(parse("/registry/example.com/widgets/a/b/c") == nil)
    }
}

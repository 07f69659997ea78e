import Foundation
import Testing
import TestSupport
@testable import EtcdAudit

/// KMS v1 values: the p11kms envelope inside names the root key, and provider names that contain ':' are matched
/// exactly (v1 names may contain ':', the apiserver matches the configured prefix).
@Suite struct StorageClassifierKMSv1Tests {
    static let id: [UInt8] = Array(0..<16).map { UInt8($0 * 17) }
    static let keyID = "p11kms-00112233445566778899aabbccddeeff"
    let key = APIServerWriter.key(namespace: "org1", name: "peer0-tls")
    let plaintext = APIServerWriter.secretProtobuf(namespace: "org1", name: "peer0-tls", data: ["a": [1]])

    /// What p11kms's v1 Encrypt returns for a 32-byte DEK: P11K, version 1, L = 16, the CKA_ID, IV, ciphertext, tag.
    static func envelope(id: [UInt8] = id, version: UInt8 = 1) -> [UInt8] {
        Array("P11K".utf8) + [version, UInt8(id.count)] + id + APIServerWriter.random(12 + 32 + 16)
    }

    func value(provider: String, dek: [UInt8]) throws -> [UInt8] {
        try APIServerWriter.kmsV1(provider: provider, etcdKey: key, plaintext: plaintext) { _ in dek }
    }

    @Test func keyIDFromTheEnvelope() throws {
        let own = try value(provider: "hsm", dek: Self.envelope())
        #expect(StorageClassifier(provider: "hsm").format(of: Data(own)) == .kmsV1(provider: "hsm", body: KMSv1Body(keyID: Self.keyID)))
        // Another provider name served by a p11kms token: the key is told too.
        let other = try value(provider: "old-name", dek: Self.envelope())
        #expect(StorageClassifier(provider: "hsm").format(of: Data(other)) == .kmsV1(provider: "old-name", body: KMSv1Body(keyID: Self.keyID)))
    }

    @Test func keyCannotBeTold() throws {
        let classifier = StorageClassifier(provider: "hsm")
        let cases: [(String, [UInt8], String)] = [
            ("foreign DEK", try value(provider: "hsm", dek: APIServerWriter.random(80)), "not a p11kms envelope"),
            ("version 2", try value(provider: "hsm", dek: Self.envelope(version: 2)), "format version 2"),
            ("short id", try value(provider: "hsm", dek: Self.envelope(id: [1, 2, 3]) + APIServerWriter.random(13)), "malformed key identity"),
            ("length past the end", Array("k8s:enc:kms:v1:hsm:".utf8) + [0x01, 0x00, 1, 2, 3], "exceeds the value"),
            ("zero length", Array("k8s:enc:kms:v1:hsm:".utf8) + [0, 0] + APIServerWriter.random(40), "empty"),
            ("no body", Array("k8s:enc:kms:v1:hsm:".utf8), "truncated"),
            ("no data", Array("k8s:enc:kms:v1:hsm:".utf8) + [0, UInt8(Self.envelope().count)] + Self.envelope(), "too short"),
        ]
        for (label, bytes, problem) in cases {
            guard case .kmsV1(let provider, let body) = classifier.format(of: Data(bytes)) else {
                Issue.record("\(label): \(classifier.format(of: Data(bytes)))")
                continue
            }
            #expect(provider == "hsm", "\(label)")
            #expect(body.keyID.isEmpty, "\(label)")
            #expect(body.problem.contains(problem), "\(label): \(body.problem)")
        }
    }

    @Test func providerNamesWithColons() throws {
        let ownWithColon = try value(provider: "hsm:eu", dek: Self.envelope())
        // The configured name "hsm:eu" is matched whole, not cut at the first ':'.
        #expect(StorageClassifier(provider: "hsm:eu").format(of: Data(ownWithColon))
                == .kmsV1(provider: "hsm:eu", body: KMSv1Body(keyID: Self.keyID)))
        // Audited as provider "hsm", the value of "hsm:eu" is another provider's.
        #expect(StorageClassifier(provider: "hsm").format(of: Data(ownWithColon))
                == .kmsV1(provider: "hsm:eu", body: KMSv1Body(keyID: Self.keyID)))
        // And the value of "hsm" is not "hsm:eu"'s.
        let plain = try value(provider: "hsm", dek: Self.envelope())
        #expect(StorageClassifier(provider: "hsm:eu").format(of: Data(plain))
                == .kmsV1(provider: "hsm", body: KMSv1Body(keyID: Self.keyID)))
        // A name with several ':' and a DEK that is not p11kms's: the name still ends where the body fits.
        let vault = try value(provider: "a:b:c", dek: APIServerWriter.random(60))
        guard case .kmsV1(let name, let body) = StorageClassifier(provider: "x").format(of: Data(vault)) else {
            Issue.record("not KMS v1")
            return
        }
        #expect(name == "a:b:c" && body.keyID.isEmpty)
    }

    /// Arbitrary bytes after the v1 prefix never crash and never invent a key_id that is not in them.
    @Test func arbitraryBodies() throws {
        var generator = SystemRandomNumberGenerator()
        let classifier = StorageClassifier(provider: "hsm")
        for _ in 0..<2000 {
            var body = APIServerWriter.random(Int.random(in: 0..<120, using: &generator))
            if body.count > 10, Bool.random(using: &generator) { body[Int.random(in: 0..<body.count, using: &generator)] = UInt8(ascii: ":") }
            let value = Array("k8s:enc:kms:v1:".utf8) + (Bool.random(using: &generator) ? Array("hsm:".utf8) : []) + body
            if case .kmsV1(_, let parsed) = classifier.format(of: Data(value)) {
                #expect(parsed.keyID.isEmpty != parsed.problem.isEmpty)
            }
        }
    }

    @Test func legacyAESGCMKeyIsParsed() throws {
        let state = KMSv2WriteState(provider: "hsm", sourceType: .aesGCMKey, keyID: Self.keyID,
                                    encryptedDEKSource: Data(APIServerWriter.random(82)))
        guard case .kmsV2(_, let envelope) = StorageClassifier(provider: "hsm").format(of: Data(try state.value(etcdKey: key, plaintext: plaintext))) else {
            Issue.record("not KMS v2")
            return
        }
        #expect(envelope.dek.sourceType == .aesGCMKey)
    }
}

import Crypto
import EtcdProto
import Foundation
import KMSProto
import SwiftProtobuf
import Synchronization

/// Builds etcd values exactly as kube-apiserver 1.29+ stores Secrets (PROTOCOL.md sections 2 and 3): unencrypted
/// protobuf or JSON, and each encryption provider's envelope. Keys are `<prefix>/secrets/<namespace>/<name>`.
public enum APIServerWriter {
    public static let protobufMagic: [UInt8] = [0x6b, 0x38, 0x73, 0x00]

    /// `<prefix>/secrets/<namespace>/<name>` with the apiserver's normalised prefix.
    public static func key(namespace: String, name: String, prefix: String = "/registry") -> String {
        var trimmed = prefix
        while trimmed.hasSuffix("/") { trimmed.removeLast() }
        return "\(trimmed)/secrets/\(namespace)/\(name)"
    }

    /// The unencrypted protobuf value: "k8s\0" + runtime.Unknown{typeMeta, raw = v1.Secret, "", ""}.
    public static func secretProtobuf(namespace: String, name: String, data: [String: [UInt8]],
                                      uid: String = UUID().uuidString.lowercased(),
                                      created: Int64 = 1_700_000_000) -> [UInt8] {
        var meta = K8s_ObjectMeta()
        meta.name = name
        meta.generateName = ""
        meta.namespace = namespace
        meta.selfLink = ""
        meta.uid = uid
        meta.resourceVersion = ""
        meta.generation = 0
        var time = K8s_Time()
        time.seconds = created
        time.nanos = 0
        meta.creationTimestamp = time
        meta.clusterName = ""
        var secret = K8s_Secret()
        secret.metadata = meta
        secret.data = data.mapValues { Data($0) }
        secret.type = "Opaque"
        var typeMeta = K8s_TypeMeta()
        typeMeta.apiVersion = "v1"
        typeMeta.kind = "Secret"
        var unknown = K8s_Unknown()
        unknown.typeMeta = typeMeta
        unknown.raw = Data(try! secret.serializedBytes(options: deterministic) as [UInt8])
        unknown.contentEncoding = ""
        unknown.contentType = ""
        return protobufMagic + (try! unknown.serializedBytes(options: deterministic) as [UInt8])
    }

    /// `<prefix>/<path>/<namespace>/<name>` for another resource type, e.g. `configmaps`, or `example.com/widgets`
    /// for a custom resource.
    public static func key(resourcePath: String, namespace: String, name: String, prefix: String = "/registry") -> String {
        var trimmed = prefix
        while trimmed.hasSuffix("/") { trimmed.removeLast() }
        return "\(trimmed)/\(resourcePath)/\(namespace)/\(name)"
    }

    /// The unencrypted protobuf ConfigMap: "k8s\0" + runtime.Unknown{typeMeta, raw = v1.ConfigMap}. A ConfigMap's
    /// metadata (1) and data (2, map<string,string>) have the wire format of a Secret's metadata and data.
    public static func configMapProtobuf(namespace: String, name: String, data: [String: String]) -> [UInt8] {
        var meta = K8s_ObjectMeta()
        meta.name = name
        meta.namespace = namespace
        meta.uid = UUID().uuidString.lowercased()
        var object = K8s_Secret()
        object.metadata = meta
        object.data = data.mapValues { Data($0.utf8) }
        var typeMeta = K8s_TypeMeta()
        typeMeta.apiVersion = "v1"
        typeMeta.kind = "ConfigMap"
        var unknown = K8s_Unknown()
        unknown.typeMeta = typeMeta
        unknown.raw = Data(try! object.serializedBytes(options: deterministic) as [UInt8])
        unknown.contentEncoding = ""
        unknown.contentType = ""
        return protobufMagic + (try! unknown.serializedBytes(options: deterministic) as [UInt8])
    }

    /// The unencrypted JSON value (`--storage-media-type=application/json`).
    public static func secretJSON(namespace: String, name: String, data: [String: [UInt8]]) -> [UInt8] {
        let encoded = data.keys.sorted().map { "\"\($0)\":\"\(Data(data[$0]!).base64EncodedString())\"" }
        let json = """
            {"kind":"Secret","apiVersion":"v1","metadata":{"name":"\(name)","namespace":"\(namespace)",\
            "uid":"\(UUID().uuidString.lowercased())","creationTimestamp":"2023-11-14T22:13:20Z"},\
            "data":{\(encoded.joined(separator: ","))},"type":"Opaque"}

            """
        return Array(json.utf8)
    }

    /// `k8s:enc:aesgcm:v1:<key>:` + nonce12 ‖ ciphertext ‖ tag16, AAD = the etcd key.
    public static func aesgcm(keyName: String, key: SymmetricKey, etcdKey: String, plaintext: [UInt8]) throws -> [UInt8] {
        let sealed = try AES.GCM.seal(plaintext, using: key, authenticating: Array(etcdKey.utf8))
        return Array("k8s:enc:aesgcm:v1:\(keyName):".utf8) + Array(sealed.combined!)
    }

    /// `k8s:enc:aescbc:v1:<key>:` + IV16 ‖ PKCS#7-padded ciphertext. The body has the real layout and length but
    /// random bytes (swift-crypto's public API has no CBC); the audit only reads the prefix.
    public static func aescbcShape(keyName: String, plaintextCount: Int) -> [UInt8] {
        let padded = (plaintextCount / 16 + 1) * 16
        return Array("k8s:enc:aescbc:v1:\(keyName):".utf8) + random(16 + padded)
    }

    /// `k8s:enc:secretbox:v1:<key>:` + nonce24 ‖ tag16 ‖ ciphertext, with random bytes of the real length.
    public static func secretboxShape(keyName: String, plaintextCount: Int) -> [UInt8] {
        Array("k8s:enc:secretbox:v1:\(keyName):".utf8) + random(24 + 16 + plaintextCount)
    }

    /// `k8s:enc:kms:v1:<provider>:` + uint16 BE length ‖ encrypted DEK ‖ nonce12 ‖ ciphertext ‖ tag16 (AAD = the
    /// etcd key), as the v1 envelope transformer writes with a fresh DEK per write.
    public static func kmsV1(provider: String, etcdKey: String, plaintext: [UInt8],
                             wrap: ([UInt8]) throws -> [UInt8]) throws -> [UInt8] {
        let dek = SymmetricKey(size: .bits256)
        let encryptedDEK = try wrap(dek.withUnsafeBytes { Array($0) })
        let sealed = try AES.GCM.seal(plaintext, using: dek, authenticating: Array(etcdKey.utf8))
        return Array("k8s:enc:kms:v1:\(provider):".utf8) + [UInt8(encryptedDEK.count >> 8), UInt8(encryptedDEK.count & 0xff)]
            + encryptedDEK + Array(sealed.combined!)
    }

    static let deterministic: BinaryEncodingOptions = {
        var options = BinaryEncodingOptions()
        options.useDeterministicOrdering = true
        return options
    }()

    public static func random(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }
}

/// The KMS v2 transformer state kube-apiserver keeps between writes: a seed (1.29+, `HKDF_SHA256_XNONCE_AES_GCM_SEED`)
/// or a DEK (1.27–1.28, `AES_GCM_KEY`, the legacy mode: `sourceType: .aesGCMKey`, field 5 left out) that the plugin
/// wrapped once, reused for every write until the key_id changes.
public struct KMSv2WriteState: Sendable {
    public enum SourceType: Sendable { case seed, aesGCMKey }

    public let provider: String
    public let sourceType: SourceType
    public let keyID: String
    public let encryptedDEKSource: Data
    public let annotations: [String: Data]
    private let secret: [UInt8]
    private let counter = Counter()

    /// Generates a fresh 32-byte seed (or DEK) and has `wrap` (the plugin's Encrypt) wrap it.
    public init(provider: String, sourceType: SourceType = .seed,
                wrap: ([UInt8]) throws -> (ciphertext: Data, keyID: String, annotations: [String: Data])) throws {
        let secret = APIServerWriter.random(32)
        let wrapped = try wrap(secret)
        self.init(provider: provider, sourceType: sourceType, secret: secret, keyID: wrapped.keyID,
                  encryptedDEKSource: wrapped.ciphertext, annotations: wrapped.annotations)
    }

    /// A state with a chosen key_id and wrapped bytes (for envelopes the plugin never produced).
    public init(provider: String, sourceType: SourceType = .seed, secret: [UInt8] = APIServerWriter.random(32),
                keyID: String, encryptedDEKSource: Data, annotations: [String: Data] = [:]) {
        self.provider = provider
        self.sourceType = sourceType
        self.secret = secret
        self.keyID = keyID
        self.encryptedDEKSource = encryptedDEKSource
        self.annotations = annotations
    }

    /// `k8s:enc:kms:v2:<provider>:` + EncryptedObject for `plaintext` stored under `etcdKey`.
    public func value(etcdKey: String, plaintext: [UInt8]) throws -> [UInt8] {
        Array("k8s:enc:kms:v2:\(provider):".utf8) + (try encryptedObject(etcdKey: etcdKey, plaintext: plaintext).serializedBytes(options: APIServerWriter.deterministic))
    }

    public func encryptedObject(etcdKey: String, plaintext: [UInt8]) throws -> V2_EncryptedObject {
        let aad = Array(etcdKey.utf8)
        var object = V2_EncryptedObject()
        switch sourceType {
        case .seed:
            // A per-write key: HKDF-Expand(SHA-256, PRK = seed, info = 32 random bytes, L = 32), no extract step.
            let info = APIServerWriter.random(32)
            let key = HKDF<SHA256>.expand(pseudoRandomKey: SymmetricKey(data: secret), info: info, outputByteCount: 32)
            let sealed = try AES.GCM.seal(plaintext, using: key, authenticating: aad)
            object.encryptedData = Data(info) + sealed.combined!
            object.encryptedDeksourceType = .hkdfSha256XnonceAesGcmSeed
        case .aesGCMKey:
            // Nonce: 4 random bytes then a little-endian 64-bit counter.
            var nonce = APIServerWriter.random(4)
            withUnsafeBytes(of: counter.next().littleEndian) { nonce += $0 }
            let sealed = try AES.GCM.seal(plaintext, using: SymmetricKey(data: secret), nonce: try AES.GCM.Nonce(data: nonce), authenticating: aad)
            object.encryptedData = sealed.combined!
        }
        object.keyID = keyID
        object.encryptedDeksource = encryptedDEKSource
        object.annotations = annotations
        return object
    }
}

/// The AES_GCM_KEY nonce counter.
final class Counter: Sendable {
    private let value = Atomic<UInt64>(0)
    func next() -> UInt64 { value.add(1, ordering: .relaxed).newValue }
}

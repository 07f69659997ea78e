import Foundation

/// What the bytes stored under a Secret's etcd key are, independently of which keys the plugin holds.
public enum StoredFormat: Sendable, Hashable {
    public enum PlainEncoding: String, Sendable, Hashable { case protobuf, json, yaml }
    public enum LocalKind: String, Sendable, Hashable { case aescbc, aesgcm, secretbox }

    /// Not encrypted.
    case plaintext(PlainEncoding)
    /// A KMS v2 envelope that parses; `provider` may or may not be the audited one.
    case kmsV2(provider: String, envelope: KMSv2Envelope)
    /// A KMS v2 prefix whose envelope does not parse (`reason` says why).
    case kmsV2Undecodable(provider: String, reason: String)
    /// A KMS v1 envelope; `body` names the root key when the encrypted DEK is a p11kms envelope.
    case kmsV1(provider: String, body: KMSv1Body)
    /// `aescbc`, `aesgcm` or `secretbox` with the named local key.
    case local(LocalKind, keyName: String)
    /// None of the formats kube-apiserver writes.
    case unrecognized(reason: String)
}

/// The parts of a KMS v2 `EncryptedObject` the audit needs; `encryptedData` is not kept.
public struct KMSv2Envelope: Sendable, Hashable {
    public enum SourceType: Int, Sendable, Hashable {
        /// `AES_GCM_KEY` (0): the plugin wrapped a 32-byte DEK (Kubernetes 1.27–1.28 default).
        case aesGCMKey = 0
        /// `HKDF_SHA256_XNONCE_AES_GCM_SEED` (1): the plugin wrapped a 32-byte seed (1.29 and later).
        case hkdfSHA256XNonceAESGCMSeed = 1
    }

    public var keyID: String
    public var dek: WrappedDEK

    public init(keyID: String, dek: WrappedDEK) {
        self.keyID = keyID
        self.dek = dek
    }
}

/// One wrapped DEK (or seed) exactly as the apiserver sends it back to the plugin's Decrypt; the apiserver's DEK
/// cache key covers the same fields, so two Secrets with equal values share one data key.
public struct WrappedDEK: Sendable, Hashable {
    public var keyID: String
    public var ciphertext: Data
    public var sourceType: KMSv2Envelope.SourceType
    public var annotations: [String: Data]

    public init(keyID: String, ciphertext: Data, sourceType: KMSv2Envelope.SourceType, annotations: [String: Data]) {
        self.keyID = keyID
        self.ciphertext = ciphertext
        self.sourceType = sourceType
        self.annotations = annotations
    }
}

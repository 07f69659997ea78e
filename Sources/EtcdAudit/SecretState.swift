/// The one state a stored Secret is classified into (see PROTOCOL.md section 3 for the formats).
public enum SecretState: String, Sendable, CaseIterable, Hashable, Comparable {
    /// Unencrypted: protobuf (`k8s\0` + runtime.Unknown) or JSON.
    case plaintext
    /// Unencrypted, and its data holds a private key (a PEM `PRIVATE KEY` block, or a Fabric MSP keystore entry):
    /// the worst finding, listed first.
    case plaintextPrivateKey = "plaintext-private-key"
    /// A KMS v2 envelope of this provider under the plugin's current key_id.
    case current
    /// A KMS v2 envelope of this provider under an older key the plugin still holds, or under any held key with the
    /// legacy `AES_GCM_KEY` data key (kube-apiserver 1.29+ rewrites those: they are stale to it too).
    case stale
    /// A KMS v2 envelope of this provider under a key_id the plugin cannot decrypt with (not held, retired, foreign).
    case unknownKey = "unknown-key"
    /// A KMS envelope (v1 or v2) of another provider name.
    case otherProvider = "other-provider"
    /// A KMS v1 envelope of this provider (its key_id read from the p11kms envelope inside, when it is one).
    case kmsV1 = "kms-v1"
    /// Encrypted with a local key: `aescbc`, `aesgcm` or `secretbox`.
    case localKey = "local-key"
    /// Carries this provider's KMS v2 prefix but the envelope does not parse, or matches no known storage format.
    case undecodable

    /// Report order: exposed private keys first, then the goal state, then what a rotation or migration still has
    /// to rewrite.
    public var order: Int {
        switch self {
        case .plaintextPrivateKey: -1
        case .current: 0
        case .stale: 1
        case .unknownKey: 2
        case .plaintext: 3
        case .kmsV1: 4
        case .localKey: 5
        case .otherProvider: 6
        case .undecodable: 7
        }
    }

    public static func < (lhs: SecretState, rhs: SecretState) -> Bool { lhs.order < rhs.order }

    /// All states in report order.
    public static var reportOrder: [SecretState] { allCases.sorted() }
}

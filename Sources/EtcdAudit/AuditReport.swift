/// One Secret as the audit found it.
public struct AuditedSecret: Sendable, Equatable {
    public var namespace: String
    public var name: String
    public var state: SecretState
    /// The KMS provider name, or the local scheme (`aescbc`, `aesgcm`, `secretbox`); empty for plaintext.
    public var provider: String
    /// The KMS key_id, or the local key name; empty where it does not apply.
    public var keyID: String
    /// Why a value is `undecodable` or a key unknown; empty otherwise. Not part of the JSON schema's required fields.
    public var detail: String

    public init(namespace: String, name: String, state: SecretState, provider: String = "", keyID: String = "",
                detail: String = "") {
        self.namespace = namespace
        self.name = name
        self.state = state
        self.provider = provider
        self.keyID = keyID
        self.detail = detail
    }
}

/// What the plugin said about one key_id found in etcd under this provider.
public struct KeyFinding: Sendable, Equatable {
    public enum Status: Sendable, Equatable {
        /// The plugin's current key.
        case current
        /// An older key the plugin still decrypts with.
        case held
        /// The plugin cannot decrypt with it; `reason` is the plugin's message (unknown, retired, ...).
        case notHeld(reason: String)
    }

    public var keyID: String
    public var status: Status
    public var secrets: Int
    /// Distinct wrapped DEKs (or seeds) seen under this key.
    public var deks: Int
}

/// The outcome of `--verify`.
public struct Verification: Sendable, Equatable {
    /// One wrapped DEK the plugin refused to unwrap.
    public struct Failure: Sendable, Equatable {
        public var keyID: String
        public var message: String
        /// "namespace/name" of every Secret stored under that DEK.
        public var secrets: [String]
    }

    /// Distinct wrapped DEKs that were sent to Decrypt.
    public var checked: Int
    public var failures: [Failure]

    public var failedSecrets: Int { failures.reduce(0) { $0 + $1.secrets.count } }
}

/// Everything one audit run found.
public struct AuditReport: Sendable {
    public var provider: String
    /// The scanned range, e.g. `/registry/secrets/`.
    public var scannedPrefixes: [String]
    /// The etcd revision every page was read at (of the first scanned range).
    public var revision: Int64
    public var plugin: PluginStatus
    /// In etcd key order.
    public var secrets: [AuditedSecret]
    public var keys: [KeyFinding]
    public var verification: Verification?
    /// Seconds spent reading and classifying etcd (without `--verify`).
    public var scanSeconds: Double

    public init(provider: String, scannedPrefixes: [String], revision: Int64, plugin: PluginStatus,
                secrets: [AuditedSecret], keys: [KeyFinding], verification: Verification?, scanSeconds: Double) {
        self.provider = provider
        self.scannedPrefixes = scannedPrefixes
        self.revision = revision
        self.plugin = plugin
        self.secrets = secrets
        self.keys = keys
        self.verification = verification
        self.scanSeconds = scanSeconds
    }

    public var total: Int { secrets.count }

    /// Counts for every state (zero included).
    public var countsByState: [SecretState: Int] {
        var counts = Dictionary(uniqueKeysWithValues: SecretState.allCases.map { ($0, 0) })
        for secret in secrets { counts[secret.state, default: 0] += 1 }
        return counts
    }

    /// Per namespace, in namespace order, the count of each state that occurs there.
    public var countsByNamespace: [(namespace: String, counts: [SecretState: Int])] {
        var table: [String: [SecretState: Int]] = [:]
        for secret in secrets { table[secret.namespace, default: [:]][secret.state, default: 0] += 1 }
        return table.keys.sorted().map { ($0, table[$0]!) }
    }

    /// True when every Secret is `current` and, with `--verify`, every DEK could be unwrapped.
    public var allCurrent: Bool {
        secrets.allSatisfy { $0.state == .current } && (verification?.failures.isEmpty ?? true)
    }

    /// The CLI's exit status: 0 when everything is current, 1 otherwise.
    public var exitStatus: Int32 { allCurrent ? 0 : 1 }
}

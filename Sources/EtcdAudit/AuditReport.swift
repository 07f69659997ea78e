import Foundation

/// One stored object (a Secret, or a value of another `--resources` type) as the audit found it.
public struct AuditedSecret: Sendable, Equatable {
    /// Empty for cluster-scoped resource types.
    public var namespace: String
    public var name: String
    public var state: SecretState
    /// The KMS provider name, or the local scheme (`aescbc`, `aesgcm`, `secretbox`); empty for plaintext.
    public var provider: String
    /// The KMS key_id, or the local key name; empty where it does not apply.
    public var keyID: String
    /// Why a value is `undecodable`, a key unknown, a value stale under the current key (legacy data key), a KMS
    /// v1 value's key cannot be told, or which data keys hold a private key (names only); empty otherwise.
    public var detail: String
    /// The resource type (`secrets`, `configmaps`, ...).
    public var resource: String

    public init(namespace: String, name: String, state: SecretState, provider: String = "", keyID: String = "",
                detail: String = "", resource: String = "secrets") {
        self.namespace = namespace
        self.name = name
        self.state = state
        self.provider = provider
        self.keyID = keyID
        self.detail = detail
        self.resource = resource
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

/// What an audit looked at: `destroy --audit-json` accepts only a complete one (every namespace, no name filter).
public struct AuditScope: Sendable, Equatable {
    public var provider: String
    /// kube-apiserver's `--etcd-prefix`, normalised (`/registry/`).
    public var etcdPrefix: String
    /// Resource types scanned (`secrets`, ...).
    public var resources: [String]
    /// Only these namespaces; empty means all.
    public var namespaces: [String]
    /// `fabric` with `--fabric` (only a Fabric operator's node-key Secrets); empty otherwise.
    public var nameFilter: String
    /// The key ranges read.
    public var prefixes: [String]
    /// The etcd revision every range was read at.
    public var revision: Int64
    /// When the scan started.
    public var time: Date

    public init(provider: String, etcdPrefix: String, resources: [String], namespaces: [String], nameFilter: String,
                prefixes: [String], revision: Int64, time: Date) {
        self.provider = provider
        self.etcdPrefix = etcdPrefix
        self.resources = resources
        self.namespaces = namespaces
        self.nameFilter = nameFilter
        self.prefixes = prefixes
        self.revision = revision
        self.time = time
    }

    /// Every object of the scanned resource types was read.
    public var complete: Bool { namespaces.isEmpty && nameFilter.isEmpty }
}

/// Everything one audit run found.
public struct AuditReport: Sendable {
    public var provider: String
    /// The scanned ranges, e.g. `/registry/secrets/`.
    public var scannedPrefixes: [String]
    /// The etcd revision every page was read at (of the first scanned range).
    public var revision: Int64
    public var plugin: PluginStatus
    /// In scan order: by resource type, then etcd key order.
    public var secrets: [AuditedSecret]
    public var keys: [KeyFinding]
    public var verification: Verification?
    /// Seconds spent reading and classifying etcd (without `--verify`).
    public var scanSeconds: Double
    public var scope: AuditScope

    public init(provider: String, scannedPrefixes: [String], revision: Int64, plugin: PluginStatus,
                secrets: [AuditedSecret], keys: [KeyFinding], verification: Verification?, scanSeconds: Double,
                scope: AuditScope? = nil) {
        self.provider = provider
        self.scannedPrefixes = scannedPrefixes
        self.revision = revision
        self.plugin = plugin
        self.secrets = secrets
        self.keys = keys
        self.verification = verification
        self.scanSeconds = scanSeconds
        self.scope = scope ?? AuditScope(provider: provider, etcdPrefix: "/registry/", resources: ["secrets"], namespaces: [],
                                         nameFilter: "", prefixes: scannedPrefixes, revision: revision, time: Date())
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

    /// Counts per resource type, in scope order.
    public var countsByResource: [(resource: String, count: Int)] {
        var counts: [String: Int] = [:]
        for secret in secrets { counts[secret.resource, default: 0] += 1 }
        return scope.resources.map { ($0, counts[$0] ?? 0) }
    }

    /// True when every Secret is `current` and, with `--verify`, every DEK could be unwrapped.
    public var allCurrent: Bool {
        secrets.allSatisfy { $0.state == .current } && (verification?.failures.isEmpty ?? true)
    }

    /// The CLI's exit status: 0 when everything is current, 1 otherwise.
    public var exitStatus: Int32 { allCurrent ? 0 : 1 }
}

import EtcdProto
import Foundation
import GRPCTransport
import Synchronization

/// One scanned range: a resource type (optionally one namespace of it).
struct ScannedRange {
    let resource: ResourceType
    let prefix: [UInt8]
    /// Length of `<prefix>/<resource path>/`, where `<namespace>/<name>` starts.
    let objectPrefixLength: Int
}

/// The values read so far, with this provider's KMS v2 envelopes grouped by wrapped DEK until the plugin has
/// said which keys it holds.
struct ScanResult {
    let classifier: StorageClassifier
    /// Only Secrets named like a Fabric operator's node-key Secrets (`--fabric`).
    let fabricOnly: Bool
    var prefixes: [String] = []
    var revision: Int64 = 0
    var secrets: [AuditedSecret] = []
    /// Distinct wrapped DEKs of this provider's KMS v2 Secrets, in order of first sight.
    var deks: [WrappedDEK] = []
    /// For each DEK, the indexes of the Secrets stored under it.
    var secretsByDEK: [[Int]] = []
    var deksByKey: [String: [Int]] = [:]
    var keyOrder: [String] = []
    private var dekIndex: [WrappedDEK: Int] = [:]

    init(classifier: StorageClassifier, fabricOnly: Bool = false) {
        self.classifier = classifier
        self.fabricOnly = fabricOnly
    }

    /// The name suffixes of the Secrets that hyperledger-labs fabric-operator and bevel keep node keys in.
    static let fabricSuffixes = ["-keystore", "-msp", "-tls", "-crypto"]

    static func isFabricKeySecret(_ name: String) -> Bool {
        fabricSuffixes.contains { name.hasSuffix($0) }
    }

    mutating func add(_ kv: Mvccpb_KeyValue, in range: ScannedRange) {
        let parsed = kv.key.withUnsafeBytes { raw in
            EtcdKeys.objectName(key: raw.bindMemory(to: UInt8.self), prefixLength: range.objectPrefixLength,
                                clusterScoped: !range.resource.isSecrets)
        }
        // Keys without the <namespace>/<name> shape (or <name> for cluster-scoped types) are not objects.
        guard let (namespace, name) = parsed else { return }
        if fabricOnly, !(range.resource.isSecrets && Self.isFabricKeySecret(name)) { return }
        var secret = AuditedSecret(namespace: namespace, name: name, state: .undecodable, resource: range.resource.name)
        switch classifier.format(of: kv.value) {
        case .plaintext(let encoding):
            let findings = range.resource.isSecrets
                ? PrivateKeyScan.secret(kv.value, encoding: encoding) : PrivateKeyScan.whole(kv.value)
            if findings.isEmpty {
                secret.state = .plaintext
            } else {
                // Names of data keys only, never their content.
                secret.state = .plaintextPrivateKey
                secret.detail = findings.map { $0.dataKey.isEmpty ? $0.kind.rawValue : "\($0.dataKey): \($0.kind.rawValue)" }
                    .joined(separator: ", ")
            }
        case .kmsV2(let provider, let envelope):
            secret.provider = provider
            secret.keyID = envelope.keyID
            if provider == classifier.provider {
                // Provisional: current, stale or unknown-key once the plugin has answered.
                secret.state = .current
                track(envelope.dek, secret: secrets.count)
            } else {
                secret.state = .otherProvider
            }
        case .kmsV2Undecodable(let provider, let reason):
            secret.provider = provider
            if provider == classifier.provider {
                secret.state = .undecodable
                secret.detail = reason
            } else {
                secret.state = .otherProvider
            }
        case .kmsV1(let provider, let body):
            secret.provider = provider
            secret.keyID = body.keyID
            secret.detail = provider == classifier.provider ? body.problem : ""
            secret.state = provider == classifier.provider ? .kmsV1 : .otherProvider
        case .local(let kind, let keyName):
            secret.state = .localKey
            secret.provider = kind.rawValue
            secret.keyID = keyName
        case .unrecognized(let reason):
            secret.state = .undecodable
            secret.detail = reason
        }
        secrets.append(secret)
    }

    private mutating func track(_ dek: WrappedDEK, secret: Int) {
        if let index = dekIndex[dek] {
            secretsByDEK[index].append(secret)
            return
        }
        let index = deks.count
        deks.append(dek)
        secretsByDEK.append([secret])
        dekIndex[dek] = index
        if deksByKey[dek.keyID] == nil { keyOrder.append(dek.keyID) }
        deksByKey[dek.keyID, default: []].append(index)
    }

    static let legacyReason = "legacy AES_GCM_KEY data key (written without the KDF seed): kube-apiserver treats it as stale"

    /// Turns the provisional `current` of this provider's KMS v2 Secrets into current, stale or unknown-key.
    mutating func applyKeyStates(_ keys: [KeyFinding]) {
        for key in keys {
            let state: SecretState
            var detail = ""
            switch key.status {
            case .current: state = .current
            case .held: state = .stale
            case .notHeld(let reason):
                state = .unknownKey
                detail = reason
            }
            for dek in deksByKey[key.keyID] ?? [] {
                var dekState = state
                var dekDetail = detail
                if deks[dek].sourceType == .aesGCMKey, state != .unknownKey {
                    // kube-apiserver 1.29+ writes with the KDF seed and treats a legacy DEK as stale even under
                    // the current key_id: a storage migration rewrites it.
                    dekState = .stale
                    dekDetail = Self.legacyReason
                }
                for index in secretsByDEK[dek] {
                    secrets[index].state = dekState
                    secrets[index].detail = dekDetail
                }
            }
        }
    }
}

/// Results of concurrent Decrypt calls, handed out by index.
final class UnwrapResults: Sendable {
    private struct State {
        var next = 0
        var finished = 0
        var stopped = false
        var outcomes: [Int: Result<Void, GRPCStatus>] = [:]
    }

    private let count: Int
    private let state = Mutex(State())

    init(count: Int) { self.count = count }

    func next() -> Int? {
        state.withLock { state in
            guard !state.stopped, state.next < count else { return nil }
            defer { state.next += 1 }
            return state.next
        }
    }

    func stop() { state.withLock { $0.stopped = true } }

    var finished: Int { state.withLock { $0.finished } }

    func set(_ index: Int, _ outcome: Result<Void, GRPCStatus>) {
        state.withLock { state in
            state.outcomes[index] = outcome
            state.finished += 1
        }
    }

    func all() -> [Int: Result<Void, GRPCStatus>] {
        state.withLock { $0.outcomes }
    }
}

import EtcdProto
import Foundation
import GRPCTransport
import Synchronization

/// The Secrets read so far, with this provider's KMS v2 envelopes grouped by wrapped DEK until the plugin has
/// said which keys it holds.
struct ScanResult {
    let classifier: StorageClassifier
    let secretsPrefixLength: Int
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

    init(classifier: StorageClassifier, secretsPrefixLength: Int) {
        self.classifier = classifier
        self.secretsPrefixLength = secretsPrefixLength
    }

    mutating func add(_ kv: Mvccpb_KeyValue) {
        let parsed = kv.key.withUnsafeBytes { raw in
            EtcdKeys.secretName(key: raw.bindMemory(to: UInt8.self), secretsPrefixLength: secretsPrefixLength)
        }
        // Keys without the <namespace>/<name> shape are not Secrets.
        guard let (namespace, name) = parsed else { return }
        var secret = AuditedSecret(namespace: namespace, name: name, state: .undecodable)
        switch classifier.format(of: kv.value) {
        case .plaintext:
            secret.state = .plaintext
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
        case .kmsV1(let provider):
            secret.provider = provider
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
                for index in secretsByDEK[dek] {
                    secrets[index].state = state
                    secrets[index].detail = detail
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

import CoreMetrics
import KeyService
import Synchronization

/// The plugin's metrics, through swift-metrics (the executable bootstraps a Prometheus backend). Handles are created
/// once and reused: the hot path only increments.
public final class KMSMetrics: Sendable {
    public enum Outcome: String, Sendable, CaseIterable {
        case success
        case invalidInput = "invalid_input"
        case refused
        case tokenUnavailable = "token_unavailable"
        case `internal`

        init(_ error: KMSError) {
            switch error.code {
            case .invalidArgument: self = .invalidInput
            case .failedPrecondition: self = .refused
            case .unavailable: self = .tokenUnavailable
            case .internal: self = .internal
            }
        }
    }

    public static let methods = ["Status", "Encrypt", "Decrypt", "Version"]

    private let operations: [String: Counter]
    private let durations: [String: Timer]
    private let keyUse = Mutex<[String: Counter]>([:])

    public init() {
        var operations: [String: Counter] = [:]
        var durations: [String: Timer] = [:]
        for method in KMSMetrics.methods {
            for outcome in Outcome.allCases {
                operations["\(method)/\(outcome.rawValue)"] = Counter(
                    label: "p11kms_operations_total", dimensions: [("method", method), ("outcome", outcome.rawValue)])
            }
            durations[method] = Timer(label: "p11kms_operation_duration_seconds", dimensions: [("method", method)],
                                      preferredDisplayUnit: .seconds)
        }
        self.operations = operations
        self.durations = durations
    }

    public func record(method: String, outcome: Outcome, since started: ContinuousClock.Instant, keyID: String? = nil) {
        operations["\(method)/\(outcome.rawValue)"]?.increment()
        let elapsed = ContinuousClock.now - started
        durations[method]?.recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
        if let keyID, method == "Encrypt" || method == "Decrypt" {
            keyCounter(keyID: keyID, operation: method == "Encrypt" ? "encrypt" : "decrypt").increment()
        }
    }

    private func keyCounter(keyID: String, operation: String) -> Counter {
        let name = "\(keyID)/\(operation)"
        return keyUse.withLock { counters in
            if let counter = counters[name] { return counter }
            let counter = Counter(label: "p11kms_root_key_operations_total", dimensions: [("key_id", keyID), ("operation", operation)])
            counters[name] = counter
            return counter
        }
    }
}

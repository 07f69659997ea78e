import CoreMetrics
import KeyService
import Logging
import PKCS11

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

    /// AES-GCM with random 96-bit IVs should stay well below 2^32 encryptions per key (NIST SP 800-38D); p11kms
    /// warns once a key passes this many encryptions in one process.
    public static let encryptionWarningThreshold: UInt64 = 1 << 31

    private let operations: [String: [Outcome: Counter]]
    private let durations: [String: Timer]
    /// Per-key series: usage on the hot path, identity and state before each scrape (KMSMetrics+Keys.swift).
    let keySeries = KeySeries()
    private let tokenHealthy = Gauge(label: "p11kms_token_healthy")
    private let sessionsOpen = Gauge(label: "p11kms_pkcs11_sessions_open")
    private let sessionsInUse = Gauge(label: "p11kms_pkcs11_sessions_in_use")
    private let keyStates: [RootKeyState: Gauge]
    private let probes: [Bool: Counter]
    private let inFlight = Gauge(label: "p11kms_grpc_calls_in_flight")
    private let warningThreshold: UInt64
    private let logger: Logger

    public init(logger: Logger = Logger(label: "p11kms"), encryptionWarningThreshold: UInt64 = KMSMetrics.encryptionWarningThreshold) {
        self.logger = logger
        self.warningThreshold = encryptionWarningThreshold
        var keyStates: [RootKeyState: Gauge] = [:]
        for state in [RootKeyState.current, .active, .retired, .pending] {
            keyStates[state] = Gauge(label: "p11kms_root_keys", dimensions: [("state", state.rawValue)])
        }
        self.keyStates = keyStates
        probes = [
            true: Counter(label: "p11kms_token_probes_total", dimensions: [("result", "ok")]),
            false: Counter(label: "p11kms_token_probes_total", dimensions: [("result", "failed")]),
        ]
        var operations: [String: [Outcome: Counter]] = [:]
        var durations: [String: Timer] = [:]
        for method in KMSMetrics.methods {
            for outcome in Outcome.allCases {
                operations[method, default: [:]][outcome] = Counter(
                    label: "p11kms_operations_total", dimensions: [("method", method), ("outcome", outcome.rawValue)])
            }
            durations[method] = Timer(label: "p11kms_operation_duration_seconds", dimensions: [("method", method)],
                                      preferredDisplayUnit: .seconds)
        }
        self.operations = operations
        self.durations = durations
    }

    public func record(method: String, outcome: Outcome, since started: ContinuousClock.Instant, keyID: String? = nil) {
        operations[method]?[outcome]?.increment()
        let elapsed = ContinuousClock.now - started
        durations[method]?.recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
        if let keyID, method == "Encrypt" || method == "Decrypt" {
            countKeyUse(keyID: keyID, operation: method == "Encrypt" ? .encrypt : .decrypt)
        }
    }

    /// Counts one use of a root key; warns (once) when a key's encryptions in this process pass the threshold.
    private func countKeyUse(keyID: String, operation: KeySeries.Operation) {
        let count = keySeries.use(keyID: keyID, operation: operation)
        if operation == .encrypt && count == warningThreshold {
            logger.warning("root key nears the AES-GCM usage limit; rotate it ('p11kms rotate')",
                           metadata: ["key_id": "\(keyID)", "encryptions": "\(count)", "limit": "4294967296"])
        }
    }

    /// One probe of the token finished.
    public func recordProbe(_ health: Health) {
        probes[health.healthy]?.increment()
        tokenHealthy.record(health.healthy ? 1 : 0)
    }

    /// Refreshes the gauges that describe the current state (called before each scrape).
    public func updateGauges(health: Health, token: Token, keys: [RootKey], inFlightCalls: Int) {
        tokenHealthy.record(health.healthy ? 1 : 0)
        sessionsOpen.record(token.openSessions)
        sessionsInUse.record(token.sessionsInUse)
        inFlight.record(inFlightCalls)
        for (state, gauge) in keyStates {
            gauge.record(keys.filter { $0.state == state }.count)
        }
        keySeries.describe(keys)
    }
}

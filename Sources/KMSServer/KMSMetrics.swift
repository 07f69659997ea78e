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
        case deadlineExceeded = "deadline_exceeded"
        case `internal`

        /// Where the outcome's counter is kept (one slot per case).
        var index: Int {
            switch self {
            case .success: 0
            case .invalidInput: 1
            case .refused: 2
            case .tokenUnavailable: 3
            case .deadlineExceeded: 4
            case .internal: 5
            }
        }

        init(_ error: KMSError) {
            switch error.code {
            case .invalidArgument: self = .invalidInput
            case .failedPrecondition: self = .refused
            case .unavailable: self = .tokenUnavailable
            case .deadlineExceeded: self = .deadlineExceeded
            case .internal: self = .internal
            }
        }
    }

    public static let methods = ["Status", "Encrypt", "Decrypt", "Version"]

    /// AES-GCM with random 96-bit IVs should stay well below 2^32 encryptions per key (NIST SP 800-38D); p11kms
    /// warns once a key passes this many encryptions in one process.
    public static let encryptionWarningThreshold: UInt64 = 1 << 31

    /// One method's handles, found with one dictionary lookup per call.
    private struct MethodHandles: Sendable {
        /// Indexed by `Outcome.index`.
        let outcomes: [Counter]
        let duration: Timer
        /// The per-key usage the method's successes count as (Encrypt and Decrypt only).
        let keyOperation: KeySeries.Operation?

        func counter(_ outcome: Outcome) -> Counter { outcomes[outcome.index] }
    }

    private let methodHandles: [String: MethodHandles]
    /// Per-key series: usage on the hot path, identity and state before each scrape (KMSMetrics+Keys.swift).
    let keySeries = KeySeries()
    private let tokenHealthy = Gauge(label: "p11kms_token_healthy")
    private let sessionsOpen = Gauge(label: "p11kms_pkcs11_sessions_open")
    private let sessionsInUse = Gauge(label: "p11kms_pkcs11_sessions_in_use")
    private let keyStates: [RootKeyState: Gauge]
    /// Objects labelled like root keys that are never used (`InvalidRootKey`): `p11kms_root_keys{state="invalid"}`.
    private let invalidKeys = Gauge(label: "p11kms_root_keys", dimensions: [("state", "invalid")])
    private let probes: [Bool: Counter]
    private let inFlight = Gauge(label: "p11kms_grpc_calls_in_flight")
    private let copiesActive = Gauge(label: "p11kms_session_key_copies", dimensions: [("state", "active")])
    private let copiesRefused = Gauge(label: "p11kms_session_key_copies", dimensions: [("state", "refused")])
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
        var methodHandles: [String: MethodHandles] = [:]
        for method in KMSMetrics.methods {
            var outcomes = [Counter?](repeating: nil, count: Outcome.allCases.count)
            for outcome in Outcome.allCases {
                outcomes[outcome.index] = Counter(
                    label: "p11kms_operations_total", dimensions: [("method", method), ("outcome", outcome.rawValue)])
            }
            methodHandles[method] = MethodHandles(
                outcomes: outcomes.map { $0! },
                duration: Timer(label: "p11kms_operation_duration_seconds", dimensions: [("method", method)],
                                preferredDisplayUnit: .seconds),
                keyOperation: method == "Encrypt" ? .encrypt : method == "Decrypt" ? .decrypt : nil)
        }
        self.methodHandles = methodHandles
    }

    public func record(method: String, outcome: Outcome, since started: ContinuousClock.Instant, keyID: String? = nil) {
        guard let handles = methodHandles[method] else { return }
        handles.counter(outcome).increment()
        let elapsed = ContinuousClock.now - started
        handles.duration.recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
        if let keyID, let operation = handles.keyOperation {
            countKeyUse(keyID: keyID, operation: operation)
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
    public func updateGauges(health: Health, token: Token, keys: [RootKey], invalidKeys: Int = 0, inFlightCalls: Int) {
        tokenHealthy.record(health.healthy ? 1 : 0)
        sessionsOpen.record(token.openSessions)
        sessionsInUse.record(token.sessionsInUse)
        let copies = token.sessionKeyCopies.status
        copiesActive.record(copies.active)
        copiesRefused.record(copies.refused)
        inFlight.record(inFlightCalls)
        for (state, gauge) in keyStates {
            gauge.record(keys.filter { $0.state == state }.count)
        }
        self.invalidKeys.record(invalidKeys)
        keySeries.describe(keys)
    }
}

/// `# HELP` lines for the scrape. swift-metrics has no help text, and the Prometheus backend refuses to mix handles
/// made with and without one, so the help is added to the rendered text: before each `# TYPE name` line that has no
/// `# HELP` yet, when `name` is in `help`. A metric missing here shows up as "no help text" in
/// `promtool check metrics` (the observability tests run it on a live plugin).
extension KMSMetrics {
    public static let help: [String: String] = [
        "p11kms_operations_total": "KMS calls handled, by method (Status, Encrypt, Decrypt, Version) and outcome.",
        "p11kms_operation_duration_seconds": "Time from receiving a KMS call to its answer, by method.",
        "p11kms_root_key_operations_total": "Successful Encrypt and Decrypt calls by root key (same values as p11kms_key_operations_total).",
        "p11kms_key_operations_total": "Successful Encrypt and Decrypt calls by root key_id and operation since the plugin started.",
        "p11kms_key_last_used_timestamp_seconds": "Unix time of the last successful Encrypt or Decrypt under a root key_id.",
        "p11kms_current_key_info": "1 for the root key that Encrypt uses now; no series for any other key.",
        "p11kms_root_key_info": "1 per root key in the token, labelled with its state (current, active, retired, pending).",
        "p11kms_root_key_created_timestamp_seconds": "Unix time at which a root key was generated (from its label in the token).",
        "p11kms_root_keys": "Root keys in the token by state (invalid: objects labelled like root keys that are never used).",
        "p11kms_token_healthy": "1 when the token answered the last probe, 0 otherwise.",
        "p11kms_token_probes_total": "Token probes (key list read, canary round trip) by result.",
        "p11kms_pkcs11_sessions_open": "PKCS#11 sessions open.",
        "p11kms_pkcs11_sessions_in_use": "PKCS#11 sessions lent to a running call.",
        "p11kms_session_key_copies": "Root keys by session-object copy state: active (AES-GCM runs with a session copy) or refused (the module refused the copy; the token object is used).",
        "p11kms_grpc_calls_in_flight": "KMS calls received and not yet answered.",
        // Serving metrics (request queue and workers).
        "p11kms_request_queue_depth": "KMS calls waiting for a worker.",
        "p11kms_request_queue_capacity": "Most KMS calls that may wait for a worker; more are rejected.",
        "p11kms_requests_rejected_total": "KMS calls rejected because the request queue was full, by method.",
        "p11kms_requests_expired_total": "KMS calls dropped because their deadline passed before a worker took them, by method.",
        "p11kms_workers_in_token": "Workers inside a PKCS#11 call now.",
        "p11kms_token_last_success_age_seconds": "Seconds since the token last answered a probe.",
    ]

    /// The scrape text with `# HELP` lines added.
    public static func withHelp(_ text: [UInt8]) -> [UInt8] {
        let typePrefix = Array("# TYPE ".utf8)
        let helpPrefix = Array("# HELP ".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(text.count + help.count * 96)
        var lastHelped: ArraySlice<UInt8> = []
        var start = text.startIndex
        while start < text.endIndex {
            let end = text[start...].firstIndex(of: UInt8(ascii: "\n")) ?? text.endIndex
            let line = text[start..<end]
            if line.starts(with: helpPrefix) {
                lastHelped = name(line.dropFirst(helpPrefix.count))
            } else if line.starts(with: typePrefix) {
                let metric = name(line.dropFirst(typePrefix.count))
                if metric != lastHelped, let description = help[String(decoding: metric, as: UTF8.self)] {
                    out.append(contentsOf: helpPrefix)
                    out.append(contentsOf: metric)
                    out.append(UInt8(ascii: " "))
                    out.append(contentsOf: description.utf8)
                    out.append(UInt8(ascii: "\n"))
                }
            }
            out.append(contentsOf: line)
            if end < text.endIndex { out.append(UInt8(ascii: "\n")) }
            start = end < text.endIndex ? text.index(after: end) : end
        }
        return out
    }

    private static func name(_ rest: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        rest.prefix { $0 != UInt8(ascii: " ") }
    }
}

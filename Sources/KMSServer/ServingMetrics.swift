import CoreMetrics
import GRPCTransport
import Synchronization

/// Metrics of the serving layer under load and on a bad day: the request queue, calls refused without running,
/// workers inside the token, and the age of the token's last good answer.
public final class ServingMetrics: Sendable {
    private let queueDepth = Gauge(label: "p11kms_request_queue_depth")
    private let queueCapacity = Gauge(label: "p11kms_request_queue_capacity")
    private let workersInToken = Gauge(label: "p11kms_workers_in_token")
    private let lastSuccessAge = Gauge(label: "p11kms_token_last_success_age_seconds")
    private let rejected: [String: Counter]
    private let expired: [String: Counter]
    /// Handlers inside a token operation now.
    let inToken = Atomic<Int>(0)

    public init() {
        var rejected: [String: Counter] = [:]
        var expired: [String: Counter] = [:]
        for method in KMSMetrics.methods {
            rejected[method] = Counter(label: "p11kms_requests_rejected_total", dimensions: [("method", method)])
            expired[method] = Counter(label: "p11kms_requests_expired_total", dimensions: [("method", method)])
        }
        self.rejected = rejected
        self.expired = expired
    }

    /// Counts a call the server answered without running it; `path` is the full gRPC method path.
    func refused(path: String, _ refusal: GRPCServerConfiguration.Refusal) {
        let method = path.split(separator: "/").last.map(String.init) ?? path
        switch refusal {
        case .queueFull: rejected[method]?.increment()
        case .deadlineExpired: expired[method]?.increment()
        }
    }

    /// Refreshes the gauges (before each scrape).
    func update(queued: Int, capacity: Int, lastSuccessAge age: Duration?) {
        queueDepth.record(queued)
        queueCapacity.record(capacity)
        workersInToken.record(inToken.load(ordering: .relaxed))
        if let age {
            lastSuccessAge.record(Double(age.components.seconds) + Double(age.components.attoseconds) / 1e18)
        } else {
            lastSuccessAge.record(-1)
        }
    }
}

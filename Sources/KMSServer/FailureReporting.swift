import GRPCTransport
import KeyService
import Logging

/// The one path every failed KMS call (v1 or v2) takes: count it, mark the token unhealthy at once when it is
/// unreachable, log it (rejected input and expired calls at debug, anything else at warning; messages carry no secrets), and map it
/// to a gRPC status.
func reportFailure(_ method: String, _ error: KMSError, since started: ContinuousClock.Instant, metadata extra: Logger.Metadata,
                   metrics: KMSMetrics, health: HealthMonitor, logger: Logger) -> GRPCStatus {
    let outcome = KMSMetrics.Outcome(error)
    metrics.record(method: method, outcome: outcome, since: started)
    if error.code == .unavailable { health.reportUnavailable(error) }
    var metadata = extra
    metadata["code"] = "\(outcome.rawValue)"
    metadata["error"] = "\(error.message)"
    if outcome == .invalidInput || outcome == .deadlineExceeded {
        // Counted in metrics; a flood of them (bad clients, a hung token) must not flood the log.
        logger.debug("\(method.lowercased()) rejected", metadata: metadata)
    } else {
        logger.warning("\(method.lowercased()) failed", metadata: metadata)
    }
    return GRPCStatus(error)
}

import Synchronization

/// Starts services in order and stops them in reverse order within one deadline.
///
/// A service that fails to start rolls back the ones already started (in reverse order, each given the rollback
/// deadline), and the error is rethrown. `shutdown(deadline:)` is idempotent; it never waits past its deadline, and
/// reports the services that did not stop in time.
public final class ServiceGroup: Sendable {
    public let services: [any Service]
    private let started = Mutex<[any Service]>([])
    private let stopping = Mutex(false)

    public init(_ services: [any Service]) {
        self.services = services
    }

    /// Starts every service in order. On failure, stops the started ones (at most `rollbackTime` in all) and throws.
    public func start(rollbackTime: Duration = .seconds(5)) throws(ServiceError) {
        for service in services {
            do throws(ServiceError) {
                try service.start()
                started.withLock { $0.append(service) }
            } catch {
                _ = shutdown(deadline: .now + rollbackTime)
                throw error
            }
        }
    }

    /// Stops the started services in reverse order; returns the names of those still running at `deadline`.
    @discardableResult
    public func shutdown(deadline: ContinuousClock.Instant) -> [String] {
        let toStop = started.withLock { list in
            let current = list
            list = []
            return current
        }
        var leftBehind: [String] = []
        for service in toStop.reversed() where !service.shutdown(deadline: deadline) {
            leftBehind.append(service.name)
        }
        return leftBehind
    }
}

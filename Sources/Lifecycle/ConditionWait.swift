/// A pthread mutex and condition variable for the few blocking waits that need a deadline (thread exit, a free
/// session, a queued call). State lives elsewhere (a `Mutex`); this only parks and wakes threads.
///
/// Plainly `Sendable`: a `ConditionLock` with no value.
public final class ConditionWait: Sendable {
    private let lock = ConditionLock(())

    public init() {}

    /// Runs `body` under the mutex (for state that needs the same mutex as the waits).
    public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// Waits until `ready()` is true (checked under the mutex) or `deadline` passes; returns the last `ready()`.
    public func wait(until deadline: ContinuousClock.Instant?, _ ready: () -> Bool) -> Bool {
        withLock { waitLocked(until: deadline, ready) }
    }

    /// As `wait(until:_:)`, for a caller that already holds the mutex through `withLock`.
    public func waitLocked(until deadline: ContinuousClock.Instant?, _ ready: () -> Bool) -> Bool {
        while !ready() {
            guard let deadline else {
                lock.waitLocked()
                continue
            }
            if !lock.waitLocked(until: deadline) { return ready() }
        }
        return true
    }

    /// One wait for a signal, at most until `deadline`, for a caller inside `withLock` that re-checks its own
    /// condition; false when the deadline had already passed (nothing was waited for).
    public func waitLocked(until deadline: ContinuousClock.Instant) -> Bool {
        lock.waitLocked(until: deadline)
    }

    /// Wakes every waiter (they re-check their condition).
    public func signalAll() { lock.signalAll() }

    /// Wakes every waiter; call only inside `withLock`.
    public func signalAllLocked() { lock.signalAllLocked() }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A pthread mutex and condition variable for the few blocking waits that need a deadline (thread exit, a free
/// session, a queued call). State lives elsewhere (a `Mutex`); this only parks and wakes threads.
///
/// `@unchecked Sendable`: it owns pthread objects allocated once at a fixed address (they must never move), and
/// pthread mutexes and condition variables are thread-safe by definition.
public final class ConditionWait: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` under the mutex (for state that needs the same mutex as the waits).
    public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
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
                pthread_cond_wait(cond, mutex)
                continue
            }
            if !waitLocked(until: deadline) { return ready() }
        }
        return true
    }

    /// One wait for a signal, at most until `deadline`, for a caller inside `withLock` that re-checks its own
    /// condition; false when the deadline had already passed (nothing was waited for).
    public func waitLocked(until deadline: ContinuousClock.Instant) -> Bool {
        let remaining = deadline - .now
        if remaining <= .zero { return false }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let (seconds, attoseconds) = remaining.components
        let nanoseconds = Int(now.tv_nsec) + Int(attoseconds / 1_000_000_000)
        var until = timespec(tv_sec: Int(now.tv_sec) + Int(seconds) + nanoseconds / 1_000_000_000,
                             tv_nsec: nanoseconds % 1_000_000_000)
        pthread_cond_timedwait(cond, mutex, &until)
        return true
    }

    /// Wakes every waiter (they re-check their condition).
    public func signalAll() {
        pthread_mutex_lock(mutex)
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
    }

    /// Wakes every waiter; call only inside `withLock`.
    public func signalAllLocked() {
        pthread_cond_broadcast(cond)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value guarded by a pthread mutex, with a condition variable to wait on it until a deadline: Lifecycle's one
/// pthread box (`ConditionWait` is one with no value).
///
/// Two uses. Blocking waits with a deadline (a free session, thread exit, a queued call), which `Mutex` cannot do.
/// And hot state that many threads take briefly: on Linux a contended `Mutex` spins in user space before it sleeps,
/// and with more threads than cores the spinning waiters burn the CPU the descheduled holder needs (a session pool
/// under a `Mutex`, 16 threads on 2 cores, sometimes cost 3-5 times the CPU per call); a pthread mutex sleeps at once.
///
/// `@unchecked Sendable` (when `State` is Sendable), and why that is sound: `state` is read and written only by
/// `withLock` and `wait(until:_:)`, with the mutex held, each in one access that ends before the mutex is released
/// (a wait releases it only between two calls of the caller's closure, never during one); the pthread mutex and
/// condition are allocated once at fixed addresses (they must never move) and are thread-safe by definition.
public final class ConditionLock<State> {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var state: State

    public init(_ initial: State) {
        state = initial
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

    /// Runs `body` on the value, under the mutex. Call `signalAllLocked()` inside it after a change a waiter waits
    /// for.
    public func withLock<T, E: Error>(_ body: (inout State) throws(E) -> T) throws(E) -> T {
        lock()
        defer { unlock() }
        return try body(&state)
    }

    /// Runs `attempt` on the value under the mutex until it returns a result, waiting for a signal between two runs,
    /// at most until `deadline` (nil: no limit). Nil when the deadline passed without a result.
    public func wait<T>(until deadline: ContinuousClock.Instant?, _ attempt: (inout State) -> T?) -> T? {
        lock()
        defer { unlock() }
        while true {
            if let result = attempt(&state) { return result }
            if let deadline {
                if !waitLocked(until: deadline) { return attempt(&state) }
            } else {
                pthread_cond_wait(cond, mutex)
            }
        }
    }

    /// Wakes every waiter (they run their attempt again).
    public func signalAll() {
        lock()
        pthread_cond_broadcast(cond)
        unlock()
    }

    /// Wakes every waiter; call only inside `withLock`.
    public func signalAllLocked() {
        pthread_cond_broadcast(cond)
    }

    func lock() { pthread_mutex_lock(mutex) }

    func unlock() { pthread_mutex_unlock(mutex) }

    /// One wait for a signal, at most until `deadline`, with the mutex held; false when the deadline had already
    /// passed (nothing was waited for).
    func waitLocked(until deadline: ContinuousClock.Instant) -> Bool {
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

    /// `pthread_cond_wait`, with the mutex held.
    func waitLocked() { pthread_cond_wait(cond, mutex) }
}

extension ConditionLock: @unchecked Sendable where State: Sendable {}

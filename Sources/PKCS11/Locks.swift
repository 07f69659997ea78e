import Lifecycle
import Synchronization

/// A shared/exclusive lock: PKCS#11 calls hold it shared, module re-initialisation holds it exclusively.
///
/// Readers are preferred, as with glibc's default `pthread_rwlock_t`: a shared hold is refused only while an
/// exclusive one is *held*, never because one is waiting, so a thread that already holds the lock shared (a
/// `withSession` inside another) can always take it shared again. An exclusive hold waits until no shared hold is
/// left.
///
/// Taking and leaving a shared hold is one atomic operation each (every PKCS#11 call does both); only a thread that
/// must wait touches Lifecycle's `ConditionWait`, which parks and wakes threads and guards nothing. No wake-up is
/// lost: a waiter checks `word` while holding the condition's mutex and is parked atomically with releasing it, and
/// whoever frees the lock does so before `signalAll()`, which takes that mutex. An exclusive waiter announces itself
/// in `exclusiveWaiting` before it checks `word`, and the last shared hold reads `exclusiveWaiting` after it left
/// (both sequentially consistent), so one of the two sees the other.
final class SharedExclusiveLock: Sendable {
    /// Twice the number of shared holds, plus 1 while the lock is held exclusively.
    private let word = Atomic<Int>(0)
    /// Threads waiting for an exclusive hold.
    private let exclusiveWaiting = Atomic<Int>(0)
    private let wakeup = ConditionWait()

    init() {}

    /// Runs `body` with the lock held shared.
    func withShared<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        if !tryShared() { _ = wakeup.wait(until: nil) { tryShared() } }
        defer {
            let left = word.subtract(2, ordering: .sequentiallyConsistent).newValue
            if left == 0, exclusiveWaiting.load(ordering: .sequentiallyConsistent) > 0 { wakeup.signalAll() }
        }
        return try body()
    }

    /// Runs `body` with the lock held exclusively (no other hold at the same time).
    func withExclusive<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        wakeup.withLock {
            exclusiveWaiting.add(1, ordering: .sequentiallyConsistent)
            _ = wakeup.waitLocked(until: nil) {
                word.compareExchange(expected: 0, desired: 1, ordering: .sequentiallyConsistent).exchanged
            }
            exclusiveWaiting.subtract(1, ordering: .sequentiallyConsistent)
        }
        defer {
            word.subtract(1, ordering: .sequentiallyConsistent)
            wakeup.signalAll()
        }
        return try body()
    }

    private func tryShared() -> Bool {
        var current = word.load(ordering: .relaxed)
        while current & 1 == 0 {
            let (exchanged, found) = word.compareExchange(expected: current, desired: current + 2,
                                                          ordering: .sequentiallyConsistent)
            if exchanged { return true }
            current = found
        }
        return false
    }
}

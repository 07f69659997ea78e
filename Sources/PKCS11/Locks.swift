import Lifecycle
import Synchronization

/// A shared/exclusive lock: PKCS#11 calls hold it shared, module re-initialisation holds it exclusively.
///
/// Readers are preferred, as with glibc's default `pthread_rwlock_t`: a shared hold is refused only while an
/// exclusive one is *held*, never because one is waiting, so a thread that already holds the lock shared (a
/// `withSession` inside another) can always take it shared again. An exclusive hold waits until no shared hold is
/// left.
///
/// The counts live in a `Mutex`; Lifecycle's `ConditionWait` only parks and wakes the threads that must wait. Every
/// change a waiter waits for is followed by `signalAll()`, which takes the condition's mutex, and every waiter
/// checks the counts while holding that mutex: no wake-up is lost.
final class SharedExclusiveLock: Sendable {
    private struct State {
        var shared = 0
        var exclusive = false
        /// Threads waiting for an exclusive hold: a shared hold that ends with none left wakes them.
        var exclusiveWaiting = 0
    }

    private let state = Mutex(State())
    private let wakeup = ConditionWait()

    init() {}

    /// Runs `body` with the lock held shared.
    func withShared<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        if !tryShared() { _ = wakeup.wait(until: nil) { tryShared() } }
        defer {
            let wake = state.withLock { s -> Bool in
                s.shared -= 1
                return s.shared == 0 && s.exclusiveWaiting > 0
            }
            if wake { wakeup.signalAll() }
        }
        return try body()
    }

    /// Runs `body` with the lock held exclusively (no other hold at the same time).
    func withExclusive<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        wakeup.withLock {
            state.withLock { $0.exclusiveWaiting += 1 }
            _ = wakeup.waitLocked(until: nil) {
                state.withLock { s in
                    guard s.shared == 0, !s.exclusive else { return false }
                    s.exclusive = true
                    s.exclusiveWaiting -= 1
                    return true
                }
            }
        }
        defer {
            state.withLock { $0.exclusive = false }
            wakeup.signalAll()
        }
        return try body()
    }

    private func tryShared() -> Bool {
        state.withLock { s in
            guard !s.exclusive else { return false }
            s.shared += 1
            return true
        }
    }
}

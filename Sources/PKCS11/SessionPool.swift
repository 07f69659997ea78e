import Lifecycle
import Synchronization

/// The sessions of one token: at most `capacity` open at once, the idle ones kept for the next caller, and callers
/// beyond the capacity waiting, each until its own deadline, for one to come back. It only counts and lends; opening,
/// checking and closing sessions is the token's business.
///
/// Sessions belong to one module initialisation: the first checkout after a re-initialisation forgets every session of
/// the older initialization (the library closed them; their handles may already name new sessions, so they are never
/// closed again) and the count starts over. A session of an older initialization that comes back is not counted twice.
///
/// The count and the idle list live in a `ConditionLock` (Lifecycle): a pthread mutex, since every call takes it
/// twice (waiters for a contended `Mutex` spin, which costs dearly when threads outnumber cores), with the condition
/// the callers beyond the capacity wait on. A waiter registers itself in the same locked run that found
/// nothing free, and whoever frees a session signals under that lock: no wake-up is lost.
final class SessionPool: Sendable {
    /// What a checkout gives: an idle session, or the right to open one (the count already includes it; give it
    /// back with `cancelOpening(initialization:)` if opening fails).
    enum Checkout {
        case idle(Session)
        case open
    }

    private struct State {
        var initialization: UInt64 = 0
        var idle: [Session] = []
        var open = 0
        var waiting = 0

        /// True when the initialization changed.
        mutating func follow(_ initialization: UInt64) -> Bool {
            guard self.initialization != initialization else { return false }
            idle.removeAll()
            open = 0
            self.initialization = initialization
            return true
        }

        mutating func take(capacity: Int) -> Checkout? {
            if let session = idle.popLast() { return .idle(session) }
            guard open < capacity else { return nil }
            open += 1
            return .open
        }
    }

    let capacity: Int
    private let state = ConditionLock(State())
    /// `State.initialization`, for readers that need nothing else (every handle lookup): written under the lock.
    private let currentInitialization = Atomic<UInt64>(0)

    init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    /// Sessions open (idle and lent out).
    var openCount: Int { state.withLock { $0.open } }

    /// Sessions lent out.
    var inUse: Int { state.withLock { $0.open - $0.idle.count } }

    /// The module initialisation of the sessions counted (0 before the first checkout).
    var initialization: UInt64 { currentInitialization.load(ordering: .acquiring) }

    /// An idle session of `initialization` or the right to open one; waits for one to come back when all are lent out,
    /// until `deadline`, then fails with `noFreeSession`.
    func checkOut(initialization: UInt64, until deadline: ContinuousClock.Instant) throws(PKCS11Error) -> Checkout {
        let started = ContinuousClock.now
        var registered = false
        let taken = state.wait(until: deadline) { s -> Checkout? in
            follow(initialization, &s)
            if let taken = s.take(capacity: capacity) {
                if registered { s.waiting -= 1 }
                return taken
            }
            if !registered {
                s.waiting += 1
                registered = true
            }
            return nil
        }
        guard let taken else {
            state.withLock { $0.waiting -= 1 }
            throw PKCS11Error(.noFreeSession(waited: ContinuousClock.now - started))
        }
        return taken
    }

    /// A session lent out comes back usable: kept for the next caller.
    func checkIn(_ session: Session) {
        change { s in
            guard s.initialization == session.initialization else { return }
            s.idle.append(session)
        }
    }

    /// A session lent out will not come back (it was closed, or its module initialisation is over).
    func remove(_ session: Session) {
        change { s in
            guard s.initialization == session.initialization else { return }
            s.open -= 1
        }
    }

    /// Opening a session after `checkOut` gave `.open` failed: the place is free again.
    func cancelOpening(initialization: UInt64) {
        change { s in
            guard s.initialization == initialization else { return }
            s.open -= 1
        }
    }

    private func follow(_ initialization: UInt64, _ s: inout State) {
        if s.follow(initialization) { currentInitialization.store(initialization, ordering: .releasing) }
    }

    private func change(_ body: (inout State) -> Void) {
        state.withLock { s in
            body(&s)
            if s.waiting > 0 { state.signalAllLocked() }
        }
    }
}

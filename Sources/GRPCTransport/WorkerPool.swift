import Dispatch
import Lifecycle
import Synchronization

/// A fixed set of our own threads that run server calls' handlers, fed by a bounded FIFO.
///
/// `submit` refuses a call when `limit` calls are already waiting (the caller answers it at once, e.g. with
/// `resourceExhausted`); before refusing, it drops waiting calls whose deadline has passed, which the caller answers
/// with `deadlineExceeded`. A worker drains the queue before it goes to sleep, and `submit` wakes a sleeping worker
/// only when the queued items outnumber the workers that are awake and looking for work, so under load most items are
/// taken without a wake-up system call.
final class WorkerPool: Sendable {
    private struct Queue: ~Copyable {
        var items: [ServerCall?] = []
        var head = 0
        /// Workers blocked (or about to block) on `wakeUp` without a wake-up already assigned.
        var sleeping = 0
        /// Workers awake and about to look at the queue (including those already woken up).
        var searching = 0
        /// Workers inside a handler.
        var busy = 0
        var stopping = false

        var count: Int { items.count - head }

        mutating func push(_ call: ServerCall) {
            if head > 64, head * 2 > items.count {
                items.removeFirst(head)
                head = 0
            }
            items.append(call)
        }

        mutating func pop() -> ServerCall? {
            guard head < items.count else { return nil }
            let call = items[head]
            items[head] = nil
            head += 1
            if head == items.count {
                items.removeAll(keepingCapacity: true)
                head = 0
            }
            return call
        }

        /// Removes the waiting calls whose deadline has passed, keeping the order of the others.
        mutating func removeExpired(now: ContinuousClock.Instant) -> [ServerCall] {
            var expired: [ServerCall] = []
            var kept: [ServerCall?] = []
            kept.reserveCapacity(count)
            for index in head..<items.count {
                guard let call = items[index] else { continue }
                if let deadline = call.deadlineInstant, deadline <= now { expired.append(call) } else { kept.append(call) }
            }
            items = kept
            head = 0
            return expired
        }
    }

    enum Admission {
        case queued
        /// The queue is full; the call was not taken. `expired` were dropped from the queue to make room (and room
        /// was still lacking, or they are answered in any case).
        case full(expired: [ServerCall])
        case accepted(expired: [ServerCall])
    }

    private enum Next {
        case run(ServerCall)
        case sleep
        case exit
    }

    let limit: Int
    private let queue = Mutex(Queue())
    private let wakeUp = DispatchSemaphore(value: 0)
    private let threads: [ServiceThread]

    init(threadCount: Int, limit: Int, name: String) {
        precondition(threadCount > 0)
        self.limit = max(1, limit)
        var started: [ServiceThread] = []
        // `self` is fully initialised only after `threads` is set; the workers start after that.
        let box = WorkerStart()
        for index in 0..<threadCount {
            started.append(ServiceThread.start(name: "\(name)-\(index)") { box.wait().run() })
        }
        threads = started
        box.set(self)
    }

    /// Calls waiting for a worker.
    var depth: Int { queue.withLock { $0.count } }

    /// Workers inside a handler now.
    var busyWorkers: Int { queue.withLock { $0.busy } }

    /// Queues `call` for a worker, or refuses it when the queue is full (see `Admission`).
    func submit(_ call: ServerCall) -> Admission {
        let (admission, wake) = queue.withLock { queue -> (Admission, Bool) in
            var expired: [ServerCall] = []
            if queue.count >= limit {
                expired = queue.removeExpired(now: .now)
                if queue.count >= limit { return (.full(expired: expired), false) }
            }
            queue.push(call)
            var wake = false
            if queue.sleeping > 0, queue.count > queue.searching {
                queue.sleeping -= 1
                queue.searching += 1
                wake = true
            }
            return (expired.isEmpty ? .queued : .accepted(expired: expired), wake)
        }
        if wake { wakeUp.signal() }
        return admission
    }

    fileprivate func run() {
        // Whoever wakes a sleeping worker counts it as searching; otherwise it counts itself.
        var countMe = true
        // A finished call is taken off `busy` in the same critical section that looks for the next one.
        var finished = false
        while true {
            let next: Next = queue.withLock { queue in
                if finished { queue.busy -= 1 }
                if countMe { queue.searching += 1 }
                queue.searching -= 1
                if let call = queue.pop() {
                    queue.busy += 1
                    return .run(call)
                }
                if queue.stopping { return .exit }
                queue.sleeping += 1
                return .sleep
            }
            switch next {
            case .run(let call):
                call.runQueued()
                finished = true
                countMe = true
            case .sleep:
                wakeUp.wait()
                finished = false
                countMe = false
            case .exit:
                return
            }
        }
    }

    /// Lets the workers finish the queued items, then stops them; waits for them until `deadline`. Returns false
    /// when a worker was still running (inside a handler) at the deadline: it is left behind.
    func stop(deadline: ContinuousClock.Instant?) -> Bool {
        let sleepers = queue.withLock { queue -> Int in
            guard !queue.stopping else { return 0 }
            queue.stopping = true
            let sleepers = queue.sleeping
            queue.sleeping = 0
            queue.searching += sleepers
            return sleepers
        }
        for _ in 0..<sleepers { wakeUp.signal() }
        var allJoined = true
        for thread in threads where !thread.join(until: deadline) { allJoined = false }
        return allJoined
    }
}

/// Hands the pool to its threads once it is initialised.
private final class WorkerStart: Sendable {
    private let pool = Mutex<WorkerPool?>(nil)
    private let ready = ConditionWait()

    func set(_ value: WorkerPool) {
        pool.withLock { $0 = value }
        ready.signalAll()
    }

    func wait() -> WorkerPool {
        _ = ready.wait(until: nil) { pool.withLock { $0 != nil } }
        return pool.withLock { $0! }
    }
}

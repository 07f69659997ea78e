import Dispatch
import Synchronization

/// A fixed set of our own threads that run server calls' handlers.
///
/// A FIFO guarded by a mutex. A worker drains the queue before it goes to sleep, and `submit` wakes a
/// sleeping worker only when the queued items outnumber the workers that are awake and looking
/// for work (not inside a handler). Under load most items are then taken without a wake-up system
/// call, while an item never waits behind a handler that is still running if a worker sleeps.
final class WorkerPool: Sendable {
    private struct Queue: ~Copyable {
        var items: [ServerCall?] = []
        var head = 0
        /// Workers blocked (or about to block) on `wakeUp` without a wake-up already assigned.
        var sleeping = 0
        /// Workers awake and about to look at the queue (including those already woken up).
        var searching = 0
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
    }

    private enum Next {
        case run(ServerCall)
        case sleep
        case exit
    }

    private let queue = Mutex(Queue())
    private let wakeUp = DispatchSemaphore(value: 0)
    private let threads = Mutex<[NativeThread]>([])

    init(threadCount: Int, name: String) {
        precondition(threadCount > 0)
        let started = (0..<threadCount).map { index in
            NativeThread.spawn(name: "\(name)-\(index)") { [self] in run() }
        }
        threads.withLock { $0 = started }
    }

    /// Hands `call` to a worker, which runs its handler and starts its final batch.
    func submit(_ call: ServerCall) {
        let wake = queue.withLock { queue in
            queue.push(call)
            guard queue.sleeping > 0, queue.count > queue.searching else { return false }
            queue.sleeping -= 1
            queue.searching += 1
            return true
        }
        if wake { wakeUp.signal() }
    }

    private func run() {
        // Whoever wakes a sleeping worker counts it as searching; otherwise it counts itself.
        var countMe = true
        while true {
            let next: Next = queue.withLock { queue in
                if countMe { queue.searching += 1 }
                queue.searching -= 1
                if let call = queue.pop() { return .run(call) }
                if queue.stopping { return .exit }
                queue.sleeping += 1
                return .sleep
            }
            switch next {
            case .run(let call):
                call.runHandler()
                countMe = true
            case .sleep:
                wakeUp.wait()
                countMe = false
            case .exit:
                return
            }
        }
    }

    /// Lets the workers finish the queued items, then stops and joins them.
    func stop() {
        let toJoin = threads.withLock { threads in
            let current = threads
            threads = []
            return current
        }
        guard !toJoin.isEmpty else { return }
        let sleepers = queue.withLock { queue in
            queue.stopping = true
            let sleepers = queue.sleeping
            queue.sleeping = 0
            queue.searching += sleepers
            return sleepers
        }
        for _ in 0..<sleepers { wakeUp.signal() }
        for thread in toJoin { thread.join() }
    }
}

import Dispatch
import Synchronization

/// A fixed set of our own threads that run server calls' handlers.
///
/// A plain FIFO guarded by a mutex; a counting semaphore wakes one idle worker per item. Items are
/// taken in order, so a slow handler never blocks the others while idle workers remain.
final class WorkerPool: Sendable {
    private struct Queue: ~Copyable {
        var items: [ServerCall?] = []
        var head = 0
        var stopping = false

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

    private let queue = Mutex(Queue())
    private let available = DispatchSemaphore(value: 0)
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
        queue.withLock { $0.push(call) }
        available.signal()
    }

    private func run() {
        while true {
            available.wait()
            let next: ServerCall?? = queue.withLock { queue in
                if let call = queue.pop() { return .some(call) }
                return queue.stopping ? .none : .some(nil)
            }
            switch next {
            case .none: return
            case .some(.none): continue
            case .some(.some(let call)): call.runHandler()
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
        queue.withLock { $0.stopping = true }
        for _ in toJoin { available.signal() }
        for thread in toJoin { thread.join() }
    }
}

import Dispatch
import Foundation
import Lifecycle
import Testing

/// Lifecycle's pthread box, which the token's session pool and every `ConditionWait` are built on.
@Suite("ConditionLock: a value under a pthread mutex, and waits with a deadline")
struct ConditionLockTests {
    @Test("changes under the lock from many threads are all kept")
    func exclusive() {
        let counter = ConditionLock(0)
        let threads = 8, increments = 20_000
        let done = DispatchSemaphore(value: 0)
        for _ in 0..<threads {
            Thread {
                for _ in 0..<increments { counter.withLock { $0 += 1 } }
                done.signal()
            }.start()
        }
        for _ in 0..<threads { #expect(done.wait(timeout: .now() + 60) == .success) }
        #expect(counter.withLock { $0 } == threads * increments)
    }

    @Test("a wait with nothing to take ends at its deadline with nil, having tried once more")
    func deadline() {
        let box = ConditionLock(0)
        let asked = ContinuousClock.now
        var attempts = 0
        let taken: Int? = box.wait(until: .now + .milliseconds(200)) { _ in
            attempts += 1
            return nil
        }
        let waited = ContinuousClock.now - asked
        #expect(taken == nil)
        #expect(waited >= .milliseconds(200) && waited < .seconds(5), "\(waited)")
        #expect(attempts >= 2, "checked again after the deadline passed")
        #expect(box.wait(until: .now - .seconds(1)) { $0 == 0 ? "free" : nil } == "free", "no wait when it is free")
    }

    @Test("a change signalled under the lock wakes the waiter long before its deadline, and it takes the value")
    func wakeup() {
        let box = ConditionLock<[Int]>([])
        let result = ConditionLock<(Int?, Duration)?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread {
            let asked = ContinuousClock.now
            let taken = box.wait(until: .now + .seconds(20)) { $0.popLast() }
            result.withLock { $0 = (taken, ContinuousClock.now - asked) }
            done.signal()
        }.start()
        Thread.sleep(forTimeInterval: 0.1)
        box.withLock { items in
            items.append(7)
            box.signalAllLocked()
        }
        #expect(done.wait(timeout: .now() + 30) == .success)
        let (taken, waited) = result.withLock { $0 } ?? (nil, .zero)
        #expect(taken == 7)
        #expect(waited < .seconds(10), "woken by the signal, not by the deadline: \(waited)")
        #expect(box.withLock { $0.isEmpty })
    }
}

import Synchronization

/// A one-way gate: closed until `open()`, then open for good. Waits on it are bounded by a deadline.
public final class Latch: Sendable {
    private let isOpen = Mutex(false)
    private let condition = ConditionWait()

    public init() {}

    public func open() {
        isOpen.withLock { $0 = true }
        condition.signalAll()
    }

    public var opened: Bool { isOpen.withLock { $0 } }

    /// Waits until the latch is open or `deadline` passes (nil: no limit); true when open.
    @discardableResult
    public func wait(until deadline: ContinuousClock.Instant?) -> Bool {
        condition.wait(until: deadline) { isOpen.withLock { $0 } }
    }
}

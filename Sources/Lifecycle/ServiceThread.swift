#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The one way p11kms starts a thread of its own: a POSIX thread (never Swift's cooperative pool, so it may block in
/// C calls), named, with termination signals blocked so that only the process's signal handler sees them.
///
/// `join(until:)` waits with a bound: a thread stuck in a C call (a hung PKCS#11 token) is then left behind, and the
/// caller decides what to do (the server exits anyway).
public final class ServiceThread: Sendable {
    /// Signals every thread blocks: termination requests (taken by the process's `sigwait`) and SIGPIPE.
    public static let blockedSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2]

    public let name: String
    private let exited = Latch()

    private init(name: String) {
        self.name = name
    }

    /// Starts `body` on a new detached thread.
    @discardableResult
    public static func start(name: String, _ body: @escaping @Sendable () -> Void) -> ServiceThread {
        let thread = ServiceThread(name: name)
        let context = Unmanaged.passRetained(Start(thread: thread, run: body)).toOpaque()
        var blocked = signalSet(blockedSignals)
        var previous = sigset_t()
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        defer { pthread_attr_destroy(&attributes) }
        #if canImport(Glibc)
        var handle = pthread_t()
        #else
        var handle: pthread_t?
        #endif
        let result = pthread_create(&handle, &attributes, { argument in
            let start = Unmanaged<Start>.fromOpaque(argument!).takeRetainedValue()
            setCurrentThreadName(start.thread.name)
            start.run()
            start.thread.exited.open()
            return nil
        }, context)
        precondition(result == 0, "pthread_create failed: \(result)")
        return thread
    }

    /// Whether the thread's body has returned.
    public var isFinished: Bool { exited.opened }

    /// Waits until the body returns or `deadline` passes; true when it returned.
    @discardableResult
    public func join(until deadline: ContinuousClock.Instant? = nil) -> Bool {
        exited.wait(until: deadline)
    }

    private final class Start: Sendable {
        let thread: ServiceThread
        let run: @Sendable () -> Void
        init(thread: ServiceThread, run: @escaping @Sendable () -> Void) {
            self.thread = thread
            self.run = run
        }
    }

    public static func signalSet(_ signals: [Int32]) -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        return set
    }
}

/// Names the calling thread (shown by `top -H`, `ps -L`, debuggers). Best effort.
private func setCurrentThreadName(_ name: String) {
    #if os(Linux)
    let descriptor = open("/proc/thread-self/comm", O_WRONLY)
    guard descriptor >= 0 else { return }
    defer { close(descriptor) }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
    #endif
}

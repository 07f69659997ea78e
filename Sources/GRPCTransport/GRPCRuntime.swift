import CGRPC

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Process-wide set-up of the gRPC C core.
///
/// `grpc_init` starts background threads (timers, executors, event engine) and the core keeps
/// creating threads lazily later on. Threads inherit the signal mask of the thread that creates them,
/// so a process that handles SIGTERM/SIGINT with `sigwait`, a signalfd or a dispatch source must
/// block those signals on the main thread *before* it creates the first `GRPCServer` or `GRPCClient`
/// (call `blockSignalsBeforeInit()` first thing in `main`). Otherwise the kernel may deliver them to a
/// gRPC thread, where the default action kills the process.
///
/// As a second line of defence this module calls `grpc_init` from a helper thread that has the
/// signals blocked, and every thread it creates itself (completion-queue and worker threads) starts
/// with them blocked too. SIGPIPE is ignored process-wide on first use.
public enum GRPCRuntime {
    /// The signals blocked by default: termination requests and SIGPIPE.
    public static let defaultBlockedSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2]

    /// Blocks `signals` on the calling thread (normally the main thread, before any gRPC object is
    /// created) so that every thread started afterwards inherits the mask. Also ignores SIGPIPE.
    public static func blockSignalsBeforeInit(_ signals: [Int32] = defaultBlockedSignals) {
        ignoreSIGPIPE()
        var set = signalSet(signals)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Sets SIGPIPE's disposition to "ignore" (writes to closed sockets then fail with EPIPE).
    public static func ignoreSIGPIPE() {
        _ = sigpipeIgnored
    }

    private static let sigpipeIgnored: Bool = {
        signal(SIGPIPE, SIG_IGN)
        return true
    }()

    static func signalSet(_ signals: [Int32]) -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        return set
    }

    /// Takes one reference on the C core library (`grpc_init`). Balanced by `release()`.
    static func retain() {
        ignoreSIGPIPE()
        // Run grpc_init on a thread with the signals blocked: the threads it starts inherit that mask.
        NativeThread.spawn(name: "grpc-init") { grpc_init() }.join()
    }

    /// Drops one reference on the C core library (`grpc_shutdown`); the last one tears it down.
    static func release() {
        grpc_shutdown()
    }
}

/// A C pointer that is shared across threads.
///
/// `@unchecked Sendable` because Swift cannot see that the gRPC core objects these point at
/// (`grpc_server`, `grpc_completion_queue`, `grpc_channel`, registered-method handles) are
/// thread-safe in the ways this module uses them; the code that owns each handle guarantees the
/// pointee outlives every thread that uses it (threads are joined before objects are destroyed).
struct CHandle: @unchecked Sendable, Equatable {
    let pointer: OpaquePointer

    init(_ pointer: OpaquePointer) { self.pointer = pointer }
    init(_ raw: UnsafeMutableRawPointer) { self.pointer = OpaquePointer(raw) }

    var raw: UnsafeMutableRawPointer { UnsafeMutableRawPointer(pointer) }
}

/// A joinable POSIX thread that is not part of Swift's cooperative pool.
struct NativeThread: Sendable {
    private let thread: pthread_t

    private final class Body {
        let name: String
        let run: @Sendable () -> Void
        init(name: String, run: @escaping @Sendable () -> Void) {
            self.name = name
            self.run = run
        }
    }

    /// Starts `body` on a new thread whose signal mask blocks `GRPCRuntime.defaultBlockedSignals`.
    static func spawn(name: String, _ body: @escaping @Sendable () -> Void) -> NativeThread {
        let context = Unmanaged.passRetained(Body(name: name, run: body)).toOpaque()
        var blocked = GRPCRuntime.signalSet(GRPCRuntime.defaultBlockedSignals)
        var previous = sigset_t()
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }

        #if canImport(Glibc)
        var thread = pthread_t()
        #else
        var thread: pthread_t?
        #endif
        let result = pthread_create(&thread, nil, { argument in
            let body = Unmanaged<Body>.fromOpaque(argument!).takeRetainedValue()
            body.run()
            return nil
        }, context)
        precondition(result == 0, "pthread_create failed: \(result)")
        #if canImport(Glibc)
        return NativeThread(thread: thread)
        #else
        return NativeThread(thread: thread!)
        #endif
    }

    func join() {
        pthread_join(thread, nil)
    }
}

import CGRPC
import Lifecycle
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Process-wide set-up of the gRPC C core.
///
/// `grpc_init` starts background threads (timers, executors), and the core keeps creating threads
/// lazily later on (event-engine pools, timer managers) from whichever thread happens to call into
/// it. Threads inherit the signal mask of the thread that creates them, so a process that handles
/// SIGTERM/SIGINT with `sigwait`, a signalfd or a dispatch source must block those signals on the
/// main thread *before* it creates the first `GRPCServer`, `GRPCClient` or any other thread (call
/// `blockSignalsBeforeInit()` first thing in `main`). Otherwise the kernel may deliver them to a
/// gRPC thread, where the default action kills the process without a graceful shutdown.
///
/// As a second line of defence this module blocks those signals on the calling thread for the
/// duration of every call into the core that may start threads (init, server start, channel
/// creation, client calls), and every thread it creates itself starts with them blocked. SIGPIPE is
/// ignored process-wide on first use.
public enum GRPCRuntime {
    /// The signals blocked by default: termination requests and SIGPIPE.
    public static let defaultBlockedSignals: [Int32] = ServiceThread.blockedSignals

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

    /// Runs `body` with `defaultBlockedSignals` blocked on the calling thread, so threads the core
    /// starts meanwhile inherit the mask; signals that arrive meanwhile stay pending until the
    /// previous mask is restored.
    @inline(__always)
    static func withSignalsBlocked<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        var blocked = blockedSet
        var previous = sigset_t()
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        return try body()
    }

    static let blockedSet = signalSet(defaultBlockedSignals)

    static func signalSet(_ signals: [Int32]) -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        return set
    }

    /// Sends the gRPC core's own log lines (by default printed to stderr) to `logger`, process-wide.
    /// Core errors are logged at `.warning`: most are routine (a failed handshake, a refused bind
    /// that `GRPCServer.start()` reports itself). Pass nil to go back to stderr.
    public static func routeCoreLogs(to logger: Logger?) {
        coreLogger.withLock { $0 = logger }
        if logger == nil {
            gpr_set_log_function(nil)
            return
        }
        gpr_set_log_function { arguments in
            guard let arguments, let logger = coreLogger.withLock({ $0 }) else { return }
            let level: Logger.Level = switch arguments.pointee.severity {
            case GPR_LOG_SEVERITY_ERROR: .warning
            case GPR_LOG_SEVERITY_INFO: .info
            default: .debug
            }
            guard logger.logLevel <= level else { return }
            let message = arguments.pointee.message.map { String(cString: $0) } ?? ""
            let file = arguments.pointee.file.map { String(cString: $0) } ?? "?"
            logger.log(
                level: level, "\(message)",
                metadata: ["grpc_source": "\(file.split(separator: "/").last ?? "?"):\(arguments.pointee.line)"])
        }
    }

    /// Takes one reference on the C core library (`grpc_init`). Balanced by `release()`.
    static func retain() {
        ignoreSIGPIPE()
        _ = abseilDeadlockDetectionOff
        withSignalsBlocked { grpc_init() }
    }

    /// The core's locks are Abseil mutexes. Abseil built without `NDEBUG` (as Debian and Ubuntu ship it) checks
    /// every lock acquisition for lock-order cycles: a process-wide graph of lock ids under a global spin lock,
    /// a few percent of the CPU of every call. Release builds of Abseil never check; neither does this process.
    /// Abseil exports the switch only as a C++ function, found by its mangled name (one per packaging namespace);
    /// where none is found (another Abseil build, or a core linked statically) nothing changes. True once the switch
    /// was found and set (evaluated before the first `grpc_init`).
    static let abseilDeadlockDetectionOff: Bool = {
        typealias SetMode = @convention(c) (Int32) -> Void
        let names = [
            "_ZN4absl7debian329SetMutexDeadlockDetectionModeENS0_15OnDeadlockCycleE",
            "_ZN4absl12lts_2022062329SetMutexDeadlockDetectionModeENS0_15OnDeadlockCycleE",
            "_ZN4absl12lts_2023012529SetMutexDeadlockDetectionModeENS0_15OnDeadlockCycleE",
            "_ZN4absl12lts_2023080229SetMutexDeadlockDetectionModeENS0_15OnDeadlockCycleE",
            "_ZN4absl12lts_2024011629SetMutexDeadlockDetectionModeENS0_15OnDeadlockCycleE",
        ]
        for name in names {
            guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { continue }
            // absl::OnDeadlockCycle::kIgnore
            unsafeBitCast(symbol, to: SetMode.self)(0)
            return true
        }
        return false
    }()

    /// Drops one reference on the C core library (`grpc_shutdown`); the last one tears it down.
    static func release() {
        grpc_shutdown()
    }
}

/// Where `GRPCRuntime.routeCoreLogs(to:)` sends core log lines.
private let coreLogger = Mutex<Logger?>(nil)

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


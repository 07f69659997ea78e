#if canImport(Glibc)
import Glibc
#endif

/// SIGTERM, SIGINT and SIGHUP are blocked in every thread and taken synchronously by `waitForTermination`: each
/// means "stop serving, drain, remove the socket" (p11kms has no configuration to reload).
enum Signals {
    static func blockTermination() {
        signal(SIGPIPE, SIG_IGN)
        var set = terminationSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Blocks until SIGTERM, SIGINT or SIGHUP arrives; returns its name.
    static func waitForTermination() -> String {
        var set = terminationSet()
        var received: Int32 = 0
        while sigwait(&set, &received) != 0 {}
        switch received {
        case SIGTERM: return "SIGTERM"
        case SIGHUP: return "SIGHUP"
        default: return "SIGINT"
        }
    }

    /// Ends the process now, without exit handlers or static destructors (a PKCS#11 module's could wait for a
    /// thread stuck inside it). Output is flushed first.
    static func exitNow(_ code: Int32) -> Never {
        fflush(nil)
        _exit(code)
    }

    private static func terminationSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGHUP)
        return set
    }
}

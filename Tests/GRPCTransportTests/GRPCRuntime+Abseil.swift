#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import GRPCTransport

@Suite("The core's Abseil locks")
struct AbseilLockCheckTests {
    /// Debian's libgrpc links Debian's Abseil (namespace `absl::debian3`), built without NDEBUG: its mutexes check
    /// every acquisition for lock-order cycles unless told not to. If a package upgrade renames the namespace, the
    /// switch is no longer found and this fails instead of the check silently coming back.
    @Test("with Debian's Abseil loaded, a served call leaves Abseil's per-lock deadlock detection switched off")
    func deadlockDetectionOff() throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        #expect(try client.unary(method: TestMethods.echo, request: [7, 8]) == [7, 8])
        let debianAbseil = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "_ZN4absl7debian35Mutex4LockEv") != nil
        try #require(debianAbseil, "the process does not have Debian's Abseil loaded; nothing to switch off")
        #expect(GRPCRuntime.abseilDeadlockDetectionOff)
    }
}

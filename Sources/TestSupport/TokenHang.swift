import Foundation
import Synchronization

/// Hangs a SoftHSM token for real, as a stuck HSM or storage would: another process holds `fcntl` write locks on
/// every object file of the token (`<tokendir>/<uuid>/*.object`), so every SoftHSM call that reads them blocks until
/// `release()` (or the end of this object).
public final class TokenHang: Sendable {
    /// The child holding the locks (Foundation's `Process` is not Sendable: used only under the lock).
    private let process: Mutex<Process>

    /// Takes the locks and returns once they are all held.
    public init(tokenFolder: URL) throws {
        let script = """
        import fcntl, glob, os, sys, time
        files = [open(p, "r+") for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.object")))]
        for f in files:
            fcntl.lockf(f, fcntl.LOCK_EX)
        print("locked %d" % len(files), flush=True)
        sys.stdin.read()
        """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, tokenFolder.path]
        let output = Pipe()
        let input = Pipe()
        process.standardOutput = output
        process.standardInput = input
        try process.run()
        ChildProcesses.register(process.processIdentifier)
        let line = output.fileHandleForReading.availableData
        guard String(decoding: line, as: UTF8.self).hasPrefix("locked ") else {
            process.terminate()
            throw FixtureError("could not lock the token's object files in \(tokenFolder.path)")
        }
        self.process = Mutex(process)
    }

    /// Drops the locks: the token answers again.
    public func release() {
        process.withLock { process in
            guard process.isRunning else { return }
            // SIGKILL: the child may have inherited a mask that blocks SIGTERM.
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    deinit { release() }
}

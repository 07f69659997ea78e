import ArgumentParser
import Foundation
import KeyService

/// Serialises the commands that create root keys (`rotate`, `rotate --stage`, `init`) on one token.
///
/// An exclusive `flock` on `<state-dir>/rotate-<hash of module and label>.lock`, held from before the key list is
/// read until the new key is current. Why a file lock and not a lock object in the token: PKCS#11 has no atomic
/// create-if-absent or compare-and-set, so two processes can both create or both "take" a token object; `flock` is
/// atomic, and the kernel releases it when the holder dies (a killed rotate leaves no stale lock; rotate's own
/// crash-safety finishes or redoes its work). Its reach is one host's state directory: rotations of one network HSM
/// started on two hosts at once are not serialised by it. For that case `KeyRing.rotate` checks, after its
/// relabel, that the key it made is the current one and fails instead of claiming a key it did not make current.
struct RotationLock {
    let path: String
    private let descriptor: Int32

    /// Takes the lock, waiting for another holder (and saying so on stderr once).
    init(stateDirectory: String, modulePath: String, tokenLabel: String) throws {
        try StateDirectory.create(stateDirectory)
        let digest = PINRejectionRecord.sha256(Array("\(modulePath)\u{0}\(tokenLabel)".utf8))
        let name = "rotate-" + PINRejectionRecord.hexString(Array(digest.prefix(8))) + ".lock"
        path = URL(fileURLWithPath: stateDirectory).appendingPathComponent(name).path
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw StateDirectoryError("cannot open the rotation lock \(path): \(String(cString: strerror(errno)))")
        }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK else {
                close(fd)
                throw StateDirectoryError("cannot lock \(path): \(String(cString: strerror(errno)))")
            }
            FileHandle.standardError.write(Data("waiting for another rotate or init on this token (lock \(path))\n".utf8))
            while flock(fd, LOCK_EX) != 0 {
                guard errno == EINTR else {
                    close(fd)
                    throw StateDirectoryError("cannot lock \(path): \(String(cString: strerror(errno)))")
                }
            }
        }
        descriptor = fd
    }

    /// Releases the lock (closing the descriptor drops it; so does exiting).
    func release() {
        close(descriptor)
    }

    /// Runs `body` holding the lock of the token the options name.
    static func holding<T>(_ options: TokenOptions, _ body: (SettingsResolver) throws -> T) throws -> T {
        let settings = try options.resolver()
        let module = settings.resolve("module", flag: options.module).value ?? ""
        let label = settings.resolve("token-label", flag: options.tokenLabel).value ?? ""
        guard let stateDirectory = settings.resolve("state-dir", flag: options.stateDir).value, !stateDirectory.isEmpty else {
            throw ValidationError("state-dir must name a directory, e.g. state-dir: /var/lib/p11kms/state")
        }
        let lock: RotationLock
        do {
            lock = try RotationLock(stateDirectory: stateDirectory, modulePath: module, tokenLabel: label)
        } catch {
            fail("\(error); rotate and init need the state directory (--state-dir) to serialise key creation")
        }
        defer { lock.release() }
        return try body(settings)
    }
}

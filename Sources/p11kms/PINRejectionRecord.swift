import COpenSSL
import Foundation
import KeyService
import PKCS11

/// Exit status of `serve`, `init` and the other token commands when the token rejected the PIN, now or on an
/// earlier start (systemd: `RestartPreventExitStatus=78`; 78 is EX_CONFIG in sysexits.h).
let pinRejectedExitCode: Int32 = 78

/// The record of a PIN the token rejected, kept in the state directory so that a restarted process (systemd's
/// `Restart=always`, the kubelet) does not try the same PIN again and again until the HSM locks the user out.
///
/// One file per token (module path and label): `pin-rejected-<hash of module and label>.json`, holding the module,
/// the label, the time, a random salt and PBKDF2-HMAC-SHA256(PIN, salt). Never the PIN. The hash is salted and
/// slow so that the file does not hand out the rejected PIN cheaply, but a short PIN can still be guessed from it by
/// whoever can read the state directory (mode 0700, root): the record is of a PIN the token refused.
struct PINRejectionRecord {
    let stateDirectory: String
    let modulePath: String
    let tokenLabel: String
    /// Where the PIN came from, for messages: "the PIN file /etc/p11kms/pin" or "P11KMS_PIN".
    let pinSource: String

    static let iterations: UInt32 = 100_000

    var path: String {
        let digest = PINRejectionRecord.sha256(Array("\(modulePath)\u{0}\(tokenLabel)".utf8))
        let name = "pin-rejected-" + digest.prefix(8).map { String(format: "%02x", $0) }.joined() + ".json"
        return URL(fileURLWithPath: stateDirectory).appendingPathComponent(name).path
    }

    /// Before any C_Login: exits with 78 when this PIN is the one recorded as rejected for this token.
    func refuseRecordedPIN(_ pin: [UInt8]) {
        guard let stored = load() else { return }
        guard PINRejectionRecord.pbkdf2(pin, salt: stored.salt, iterations: stored.iterations) == stored.hash else { return }
        fail("""
        not logging in: the token '\(tokenLabel)' (module \(modulePath)) rejected this PIN (from \(pinSource)) at \
        \(stored.rejectedAt), and trying it again could lock the token. Put the right PIN in place (a different PIN \
        is tried once), or delete \(path) to try this one again.
        """, code: pinRejectedExitCode)
    }

    /// After a rejected C_Login: records the PIN's hash and exits with 78.
    func recordAndExit(_ pin: [UInt8], error: PKCS11Error) -> Never {
        var note = "recorded in \(path)"
        do {
            try write(pin)
        } catch {
            note = "could not record it in \(path) (\(error)); a restart will try it again"
        }
        fail("""
        the token '\(tokenLabel)' (module \(modulePath)) rejected the PIN from \(pinSource): \(error.description). \
        Not retried; \(note). Fix the PIN, then start again.
        """, code: pinRejectedExitCode)
    }

    /// After a successful login: a record of another (rejected) PIN is stale.
    func clear() {
        if FileManager.default.fileExists(atPath: path) { try? FileManager.default.removeItem(atPath: path) }
    }

    struct Stored {
        let salt: [UInt8]
        let hash: [UInt8]
        let iterations: UInt32
        let rejectedAt: String
    }

    func load() -> Stored? {
        guard let data = FileManager.default.contents(atPath: path),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let salt = (object["salt"] as? String).flatMap(PINRejectionRecord.hex),
              let hash = (object["pin_pbkdf2_sha256"] as? String).flatMap(PINRejectionRecord.hex),
              let iterations = object["iterations"] as? Int, (1...10_000_000).contains(iterations) else { return nil }
        return Stored(salt: salt, hash: hash, iterations: UInt32(iterations), rejectedAt: object["rejected_at"] as? String ?? "an earlier start")
    }

    private func write(_ pin: [UInt8]) throws {
        try StateDirectory.create(stateDirectory)
        let salt = SecureRandom.bytes(16)
        let hash = PINRejectionRecord.pbkdf2(pin, salt: salt, iterations: PINRejectionRecord.iterations)
        let object: [String: Any] = [
            "module": modulePath, "token_label": tokenLabel, "pin_source": pinSource,
            "rejected_at": ISO8601DateFormatter().string(from: Date()),
            "salt": PINRejectionRecord.hexString(salt), "pin_pbkdf2_sha256": PINRejectionRecord.hexString(hash),
            "iterations": Int(PINRejectionRecord.iterations),
            "note": "the token rejected this PIN; p11kms will not try it again. Fix the PIN, or delete this file to retry it.",
        ]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
        let temporary = path + ".new"
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw StateDirectoryError("cannot write \(temporary): \(String(cString: strerror(errno)))")
        }
        guard rename(temporary, path) == 0 else {
            throw StateDirectoryError("cannot rename \(temporary): \(String(cString: strerror(errno)))")
        }
    }

    static func pbkdf2(_ password: [UInt8], salt: [UInt8], iterations: UInt32) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: 32)
        let ok = password.withUnsafeBufferPointer { pw in
            salt.withUnsafeBufferPointer { s in
                output.withUnsafeMutableBufferPointer { out in
                    PKCS5_PBKDF2_HMAC(pw.baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self) }, Int32(pw.count),
                                      s.baseAddress, Int32(s.count), Int32(iterations), EVP_sha256(), Int32(out.count), out.baseAddress)
                }
            }
        }
        precondition(ok == 1, "PKCS5_PBKDF2_HMAC failed")
        return output
    }

    static func sha256(_ bytes: [UInt8]) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        let ok = bytes.withUnsafeBufferPointer { input in
            output.withUnsafeMutableBufferPointer { out in
                EVP_Digest(input.baseAddress, input.count, out.baseAddress, &length, EVP_sha256(), nil)
            }
        }
        precondition(ok == 1 && length == 32, "EVP_Digest failed")
        return output
    }

    static func hexString(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    static func hex(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0, !chars.isEmpty else { return nil }
        var out: [UInt8] = []
        for i in stride(from: 0, to: chars.count, by: 2) {
            guard let byte = UInt8(String(decoding: chars[i..<i + 2], as: UTF8.self), radix: 16) else { return nil }
            out.append(byte)
        }
        return out
    }
}

struct StateDirectoryError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// p11kms's own state (`state-dir`, default /var/lib/p11kms/state): created on first use with mode 0700.
enum StateDirectory {
    static func create(_ path: String) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw StateDirectoryError("the state directory \(path) is not a directory") }
            // Made by someone else (a hostPath volume is 0755): p11kms's own state is for its owner only.
            var st = stat()
            if lstat(path, &st) == 0, st.st_uid == geteuid(), st.st_mode & 0o077 != 0 { _ = chmod(path, 0o700) }
            return
        }
        let parent = URL(fileURLWithPath: path).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        guard mkdir(path, 0o700) == 0 || errno == EEXIST else {
            throw StateDirectoryError("cannot create the state directory \(path): \(String(cString: strerror(errno)))")
        }
        // mkdir's mode is masked by the umask; 0700 is what is meant.
        _ = chmod(path, 0o700)
    }
}

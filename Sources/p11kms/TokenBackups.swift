import Foundation
import KeyService
#if canImport(Glibc)
import Glibc
#endif

/// Copies of a SoftHSM token directory in `<state-dir>/token-backups/<UTC time>/`, made after every key change and
/// when `serve` starts on a token directory that changed since the newest copy.
///
/// SoftHSM 2.6.1 rewrites `token.object` in place on every `C_Login` and a key's file on every attribute change, so
/// a crash inside that write leaves a token SoftHSM no longer sees. A backup is the token directory as SoftHSM
/// wrote it (every file stays encrypted under the PIN-derived key): `tokens/` is the copy, `manifest.json` says
/// which token and which key_ids it holds, so listing needs no PIN. The files are read twice and copied only when
/// both reads agree (a login by another process rewrites `token.object` meanwhile: then it is read again); the copy
/// is written to a temporary folder, every file and folder is fsynced, and the folder is renamed into place.
struct TokenBackups {
    let stateDirectory: String
    /// SoftHSM's `directories.tokendir`.
    let tokenDirectory: String

    var root: String { (stateDirectory as NSString).appendingPathComponent("token-backups") }

    static let defaultKeep = 10

    struct Made {
        let path: String
        let files: Int
        let bytes: Int
        let seconds: Double
    }

    /// SoftHSM's token directory when the module is SoftHSM: `directories.tokendir` of SOFTHSM2_CONF (SoftHSM's
    /// built-in /etc/softhsm/softhsm2.conf when it is not set). Nil for any other module.
    static func softHSMTokenDirectory(modulePath: String) -> String? {
        guard URL(fileURLWithPath: modulePath).lastPathComponent.lowercased().contains("softhsm") else { return nil }
        let exported = getenv("SOFTHSM2_CONF").map { String(cString: $0) } ?? ""
        let conf = exported.isEmpty ? "/etc/softhsm/softhsm2.conf" : exported
        guard let directory = TokenOptions.tokenDirectory(inSoftHSMConf: conf), !directory.isEmpty else { return nil }
        return directory
    }

    /// The newest backup's manifest, if any.
    func newest() -> (path: String, manifest: BackupManifest)? {
        for name in backupNames().reversed() {
            let path = (root as NSString).appendingPathComponent(name)
            if let manifest = BackupManifest.load(backup: path) { return (path, manifest) }
        }
        return nil
    }

    /// Backup folder names, oldest first (they sort by time).
    func backupNames() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted()
    }

    /// Whether the token directory differs from the newest backup, `token.object` and lock files aside (SoftHSM
    /// rewrites `token.object` on every login, so its bytes change without any change to the keys).
    func changedSinceNewest() throws -> Bool {
        guard let newest = newest() else { return true }
        let snapshot = try TokenSnapshot.read(tokenDirectory)
        return snapshot.contentFingerprint != newest.manifest.contentFingerprint
    }

    /// Copies the token directory into a new backup and keeps the newest `keep`.
    func make(tokenLabel: String, modulePath: String, keys: [RootKey], reason: String, keep: Int) throws -> Made {
        let started = ContinuousClock.now
        try StateDirectory.create(stateDirectory)
        try TokenBackups.makeDirectory(root)
        let snapshot = try TokenSnapshot.consistent(tokenDirectory)
        let name = TokenBackups.timestampName(Date())
        var final = (root as NSString).appendingPathComponent(name)
        var suffix = 1
        while FileManager.default.fileExists(atPath: final) {
            suffix += 1
            final = (root as NSString).appendingPathComponent("\(name)-\(suffix)")
        }
        let temporary = (root as NSString).appendingPathComponent(".partial-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        do {
            try TokenBackups.makeDirectory(temporary)
            try snapshot.write(into: (temporary as NSString).appendingPathComponent("tokens"))
            let manifest = BackupManifest(
                created: BackupManifest.rfc3339(Date()), reason: reason, tokenLabel: tokenLabel, module: modulePath,
                tokenDirectory: tokenDirectory, tokenFolder: snapshot.folder(holdingLabel: tokenLabel),
                keys: keys.map { .init(keyID: $0.keyID, state: $0.state.rawValue, generation: $0.generation) },
                files: snapshot.hashes, contentFingerprint: snapshot.contentFingerprint)
            try TokenBackups.writeDurably(try manifest.encoded(), to: (temporary as NSString).appendingPathComponent("manifest.json"))
            try TokenBackups.fsyncPath(temporary)
            guard rename(temporary, final) == 0 else {
                throw StateDirectoryError("cannot rename \(temporary) to \(final): \(String(cString: strerror(errno)))")
            }
            try TokenBackups.fsyncPath(root)
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
        prune(keep: keep)
        let elapsed = ContinuousClock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return Made(path: final, files: snapshot.files.count, bytes: snapshot.files.reduce(0) { $0 + $1.bytes.count }, seconds: seconds)
    }

    /// Deletes all but the newest `keep` backups, and partial copies an interrupted run left (older than an hour).
    func prune(keep: Int) {
        let names = backupNames()
        for name in names.dropLast(max(keep, 1)) {
            try? FileManager.default.removeItem(atPath: (root as NSString).appendingPathComponent(name))
        }
        let hourAgo = Date().addingTimeInterval(-3600)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] where name.hasPrefix(".partial-") {
            let path = (root as NSString).appendingPathComponent(name)
            if let modified = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date, modified < hourAgo {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
    }

    /// `20261202T181500.123Z`: UTC, sortable, unique per millisecond.
    static func timestampName(_ date: Date) -> String {
        let seconds = Int(date.timeIntervalSince1970.rounded(.down))
        let millis = Int((date.timeIntervalSince1970 - Double(seconds)) * 1000)
        let stamp = RootKey.timestamp(seconds)
        return String(stamp.dropLast()) + "." + String(format: "%03d", millis) + "Z"
    }

    static func makeDirectory(_ path: String) throws {
        if mkdir(path, 0o700) != 0, errno != EEXIST {
            throw StateDirectoryError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        _ = chmod(path, 0o700)
    }

    /// Writes a new file (mode 0600) and fsyncs it.
    static func writeDurably(_ bytes: [UInt8], to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw StateDirectoryError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw StateDirectoryError("cannot write \(path): \(String(cString: strerror(errno)))") }
            offset += n
        }
        guard fsync(fd) == 0 else { throw StateDirectoryError("cannot fsync \(path): \(String(cString: strerror(errno)))") }
    }

    /// fsync of a folder, so that the names in it (a rename, new files) survive a power loss.
    static func fsyncPath(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw StateDirectoryError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw StateDirectoryError("cannot fsync \(path): \(String(cString: strerror(errno)))") }
    }
}

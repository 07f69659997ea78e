import Foundation
import KeyService
#if canImport(Glibc)
import Glibc
#endif

/// What the plugin remembers of a token's keys outside the token, to notice a token rolled back to an older copy
/// (a restored backup, an old rsync): `<state-dir>/key-history-<hash of module and label>.json` holds every key_id
/// `serve` has seen in the token (written when it starts and whenever the key list changes), the newest generation,
/// the key_ids `p11kms destroy` deleted, and those an operator accepted as lost (`--accept-key-rollback`).
///
/// A token that lacks a key in that history (and neither destroyed nor accepted) has lost keys that may have
/// wrapped Secrets: `serve` and `init` refuse it. Each change is a read-modify-write under an exclusive `flock`
/// of `<file>.lock`, written to a temporary file, fsynced and renamed.
struct KeyHistory: Sendable {
    let path: String
    let stateDirectory: String

    struct Record: Codable, Equatable {
        var module: String
        var tokenLabel: String
        /// Every key_id seen in the token, with its generation.
        var seen: [String: Int] = [:]
        var newestGeneration = 0
        /// key_id → when `p11kms destroy` deleted it.
        var destroyed: [String: String] = [:]
        /// key_id → when an operator accepted its loss (`--accept-key-rollback`).
        var acceptedMissing: [String: String] = [:]
        var updated = ""

        enum CodingKeys: String, CodingKey {
            case module, seen, destroyed, updated
            case tokenLabel = "token_label", newestGeneration = "newest_generation", acceptedMissing = "accepted_missing"
        }

        /// Keys in the history the token no longer holds (neither destroyed nor accepted), oldest first.
        func missing(from keys: [RootKey]) -> [(keyID: String, generation: Int)] {
            let present = Set(keys.map(\.keyID))
            return seen.filter { !present.contains($0.key) && destroyed[$0.key] == nil && acceptedMissing[$0.key] == nil }
                .map { ($0.key, $0.value) }.sorted { ($0.generation, $0.keyID) < ($1.generation, $1.keyID) }
        }

        /// Whether any key in the history is still expected in the token.
        var expectsKeys: Bool { seen.keys.contains { destroyed[$0] == nil && acceptedMissing[$0] == nil } }
    }

    init(stateDirectory: String, modulePath: String, tokenLabel: String) {
        self.stateDirectory = stateDirectory
        let digest = PINRejectionRecord.sha256(Array("\(modulePath)\u{0}\(tokenLabel)".utf8))
        let name = "key-history-" + PINRejectionRecord.hexString(Array(digest.prefix(8))) + ".json"
        path = (stateDirectory as NSString).appendingPathComponent(name)
        module = modulePath
        label = tokenLabel
    }

    private let module: String
    private let label: String

    /// The history, or nil when there is none yet. A file that cannot be parsed is an error (never silently reset).
    func load() throws -> Record? {
        guard let data = FileManager.default.contents(atPath: path) else {
            if FileManager.default.fileExists(atPath: path) { throw StateDirectoryError("cannot read \(path)") }
            return nil
        }
        do {
            return try JSONDecoder().decode(Record.self, from: data)
        } catch {
            throw StateDirectoryError("\(path) is damaged (\(error)); move it aside to start a new key history")
        }
    }

    /// Applies `change` to the history under its lock and writes it back when it changed.
    @discardableResult
    func update(_ change: (inout Record) -> Void) throws -> Record {
        try StateDirectory.create(stateDirectory)
        let lockPath = path + ".lock"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw StateDirectoryError("cannot open \(lockPath): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw StateDirectoryError("cannot lock \(lockPath): \(String(cString: strerror(errno)))") }
        }
        let before = try load()
        var record = before ?? Record(module: module, tokenLabel: label)
        change(&record)
        guard record != before else { return record }
        record.updated = BackupManifest.rfc3339(Date())
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let temporary = path + ".new"
        try? FileManager.default.removeItem(atPath: temporary)
        try TokenBackups.writeDurably(Array(try encoder.encode(record)) + [0x0a], to: temporary)
        guard rename(temporary, path) == 0 else {
            throw StateDirectoryError("cannot rename \(temporary): \(String(cString: strerror(errno)))")
        }
        try TokenBackups.fsyncPath(stateDirectory)
        return record
    }

    /// Adds the token's keys to the history.
    @discardableResult
    func recordSeen(_ keys: [RootKey]) throws -> Record {
        try update { record in
            for key in keys { record.seen[key.keyID] = key.generation }
            record.newestGeneration = max(record.newestGeneration, keys.map(\.generation).max() ?? 0)
        }
    }

    func recordDestroyed(_ keyID: String) throws {
        try update { $0.destroyed[keyID] = BackupManifest.rfc3339(Date()) }
    }

    func recordAccepted(_ missing: [String]) throws {
        try update { record in
            for keyID in missing { record.acceptedMissing[keyID] = BackupManifest.rfc3339(Date()) }
        }
    }
}

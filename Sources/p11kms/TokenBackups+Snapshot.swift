import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Every regular file of a token directory, read into memory (a SoftHSM token is a few kilobytes per key).
struct TokenSnapshot {
    struct File: Equatable {
        /// Relative to the token directory, e.g. `b062c8f4-…/token.object`.
        let path: String
        let bytes: [UInt8]
    }

    let files: [File]

    /// Reads the directory twice and returns when both reads agree (another process's login rewrites
    /// `token.object` in place meanwhile: then it is read again, up to 20 times).
    static func consistent(_ directory: String) throws -> TokenSnapshot {
        var previous = try read(directory)
        for _ in 0..<20 {
            let again = try read(directory)
            if again.files == previous.files { return again }
            previous = again
            usleep(20_000)
        }
        throw StateDirectoryError("the token directory \(directory) kept changing while it was copied; not backed up")
    }

    static func read(_ directory: String) throws -> TokenSnapshot {
        var files: [File] = []
        try collect(directory, relative: "", into: &files)
        guard !files.isEmpty else { throw StateDirectoryError("the token directory \(directory) holds no files") }
        // An empty token.object is what a torn write leaves: such a token is not worth a backup.
        for file in files where file.path.hasSuffix("/token.object") && file.bytes.isEmpty {
            throw StateDirectoryError("\(directory)/\(file.path) is empty (a torn write): not backed up; restore the token from an earlier backup")
        }
        return TokenSnapshot(files: files.sorted { $0.path < $1.path })
    }

    private static func collect(_ directory: String, relative: String, into files: inout [File]) throws {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw StateDirectoryError("cannot read the token directory \(directory): \(error.localizedDescription)")
        }
        for name in names.sorted() {
            let path = (directory as NSString).appendingPathComponent(name)
            let rel = relative.isEmpty ? name : "\(relative)/\(name)"
            var st = stat()
            guard lstat(path, &st) == 0 else { continue }
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                try collect(path, relative: rel, into: &files)
            case S_IFREG:
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw StateDirectoryError("cannot read \(path)")
                }
                files.append(File(path: rel, bytes: Array(data)))
            default:
                continue
            }
        }
    }

    /// SHA-256 of each file, hex.
    var hashes: [String: String] {
        Dictionary(uniqueKeysWithValues: files.map { ($0.path, PINRejectionRecord.hexString(PINRejectionRecord.sha256($0.bytes))) })
    }

    /// A digest of every file but `token.object` and the (empty) lock files: what changes when keys change.
    var contentFingerprint: String {
        var text = ""
        for file in files where !file.path.hasSuffix("token.object") && !file.path.hasSuffix(".lock") {
            text += "\(file.path)\u{0}\(PINRejectionRecord.hexString(PINRejectionRecord.sha256(file.bytes)))\n"
        }
        return PINRejectionRecord.hexString(PINRejectionRecord.sha256(Array(text.utf8)))
    }

    /// The token's own folder: the one whose `token.object` holds the label (SoftHSM stores it space-padded to 32
    /// bytes, in the clear).
    func folder(holdingLabel label: String) -> String? {
        let padded = Array((label + String(repeating: " ", count: max(0, 32 - label.utf8.count))).utf8)
        for file in files where file.path.hasSuffix("/token.object") {
            if file.bytes.count >= padded.count,
               (0...(file.bytes.count - padded.count)).contains(where: { file.bytes[$0..<($0 + padded.count)].elementsEqual(padded) }) {
                return String(file.path.dropLast("/token.object".count))
            }
        }
        return nil
    }

    /// Writes every file under `directory` (created mode 0700; files 0600), fsyncing each file and folder.
    func write(into directory: String) throws {
        try TokenBackups.makeDirectory(directory)
        var folders: Set<String> = [directory]
        for file in files {
            let target = (directory as NSString).appendingPathComponent(file.path)
            let parent = (target as NSString).deletingLastPathComponent
            if !folders.contains(parent) {
                var path = directory
                for component in file.path.split(separator: "/").dropLast() {
                    path = (path as NSString).appendingPathComponent(String(component))
                    if folders.insert(path).inserted { try TokenBackups.makeDirectory(path) }
                }
            }
            try TokenBackups.writeDurably(file.bytes, to: target)
        }
        for folder in folders.sorted(by: { $0.count > $1.count }) { try TokenBackups.fsyncPath(folder) }
    }
}

/// `manifest.json` of a backup.
struct BackupManifest: Codable {
    struct Key: Codable {
        let keyID: String
        let state: String
        let generation: Int
        enum CodingKeys: String, CodingKey { case keyID = "key_id", state, generation }
    }

    let created: String
    /// What made it: `init`, `rotate`, `retire`, `restore`, `destroy` or `serve start`.
    let reason: String
    let tokenLabel: String
    let module: String
    let tokenDirectory: String
    /// The folder inside `tokens/` that is this token (nil when the label was not found in a `token.object`).
    let tokenFolder: String?
    let keys: [Key]
    /// SHA-256 of each file under `tokens/`.
    let files: [String: String]
    let contentFingerprint: String

    enum CodingKeys: String, CodingKey {
        case created, reason, keys, files, module
        case tokenLabel = "token_label", tokenDirectory = "token_directory", tokenFolder = "token_folder"
        case contentFingerprint = "content_fingerprint"
    }

    func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return Array(try encoder.encode(self)) + [0x0a]
    }

    static func load(backup: String) -> BackupManifest? {
        guard let data = FileManager.default.contents(atPath: (backup as NSString).appendingPathComponent("manifest.json")) else { return nil }
        return try? JSONDecoder().decode(BackupManifest.self, from: data)
    }

    /// The files of the backup whose bytes no longer match the manifest (or are missing): empty when intact.
    func damagedFiles(backup: String) -> [String] {
        let tokens = (backup as NSString).appendingPathComponent("tokens")
        return files.keys.sorted().filter { path in
            guard let data = FileManager.default.contents(atPath: (tokens as NSString).appendingPathComponent(path)) else { return true }
            return PINRejectionRecord.hexString(PINRejectionRecord.sha256(Array(data))) != files[path]
        }
    }

    static func rfc3339(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }
}

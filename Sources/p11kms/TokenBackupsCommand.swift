import ArgumentParser
import Foundation
import KeyService

/// `--token-backups N` of the commands that change keys (and `serve`).
struct BackupOptions: ParsableArguments {
    @Option(help: ArgumentHelp("SoftHSM only: token-directory backups kept in <state-dir>/token-backups, made after every key change; 0 turns them off (env P11KMS_TOKEN_BACKUPS; default 10).", valueName: "n"))
    var tokenBackups: String?

    func keep(_ settings: SettingsResolver) throws -> Int {
        try settings.int("token-backups", flag: tokenBackups, range: 0...10_000)
    }
}

extension TokenBackups {
    /// After a key change by a command: backs the token directory up (SoftHSM only) and says where on stderr. A
    /// failed backup is reported but does not fail the command: the key change itself is done.
    static func afterKeyChange(_ reason: String, ring: KeyRing, token: TokenOptions, backup: BackupOptions) {
        do {
            let settings = try token.resolver()
            let keep = try backup.keep(settings)
            guard keep > 0 else { return }
            let names = try token.names(settings)
            guard let directory = softHSMTokenDirectory(modulePath: names.module) else { return }
            let backups = TokenBackups(stateDirectory: names.stateDirectory, tokenDirectory: directory)
            let made = try backups.make(tokenLabel: names.label, modulePath: names.module, keys: ring.keys, reason: reason, keep: keep)
            FileHandle.standardError.write(Data("backed up the token directory \(directory) to \(made.path) (\(made.files) files, \(made.bytes) bytes, \(Int((made.seconds * 1000).rounded())) ms)\n".utf8))
        } catch {
            FileHandle.standardError.write(Data("p11kms: warning: the token directory was not backed up: \(error)\n".utf8))
        }
    }
}

extension TokenOptions {
    /// The module, token label and state directory, without reading the PIN.
    func names(_ settings: SettingsResolver) throws -> (module: String, label: String, stateDirectory: String) {
        let module = settings.resolve("module", flag: self.module).value ?? ""
        let label = settings.resolve("token-label", flag: tokenLabel).value ?? ""
        guard let stateDirectory = settings.resolve("state-dir", flag: stateDir).value, !stateDirectory.isEmpty else {
            throw ValidationError("state-dir must name a directory, e.g. state-dir: /var/lib/p11kms/state")
        }
        return (module, label, stateDirectory)
    }
}

struct TokenBackupsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token-backups",
        abstract: "List the SoftHSM token-directory backups in <state-dir>/token-backups, newest first, with the key_ids each holds.",
        discussion: """
        Backups are made after every key change (init, rotate, retire, restore, destroy) and when serve starts on a \
        token directory that changed since the newest backup; --token-backups N (default 10) are kept. Each holds \
        the token directory as SoftHSM wrote it (encrypted under the PIN-derived key) and a manifest.json with the \
        key_ids; the listing reads the manifests (no PIN) and checks every file against its recorded SHA-256. \
        README, "Restoring the token from a backup", gives the procedure.
        """)

    @Option(help: ArgumentHelp("Config file (env P11KMS_CONFIG).", valueName: "file"))
    var config: String?

    @Option(help: ArgumentHelp("Directory for p11kms's own state (env P11KMS_STATE_DIR; default /var/lib/p11kms/state).", valueName: "dir"))
    var stateDir: String?

    @Option(help: ArgumentHelp("Output: text or json.", valueName: "format"))
    var format: String = "text"

    func run() throws {
        guard format == "text" || format == "json" else { fail("--format must be text or json", code: 2) }
        let settings = try SettingsResolver(configPath: config)
        guard let stateDirectory = settings.resolve("state-dir", flag: stateDir).value, !stateDirectory.isEmpty else {
            throw ValidationError("state-dir must name a directory, e.g. state-dir: /var/lib/p11kms/state")
        }
        let backups = TokenBackups(stateDirectory: stateDirectory, tokenDirectory: "")
        var rows: [[String: Any]] = []
        for name in backups.backupNames().reversed() {
            let path = (backups.root as NSString).appendingPathComponent(name)
            guard let manifest = BackupManifest.load(backup: path) else {
                rows.append(["name": name, "path": path, "intact": false, "error": "no readable manifest.json"])
                continue
            }
            let damaged = manifest.damagedFiles(backup: path)
            var row: [String: Any] = [
                "name": name, "path": path, "created": manifest.created, "reason": manifest.reason,
                "token_label": manifest.tokenLabel, "token_directory": manifest.tokenDirectory,
                "token_folder": manifest.tokenFolder ?? NSNull(), "intact": damaged.isEmpty, "damaged_files": damaged,
                "keys": manifest.keys.map { ["key_id": $0.keyID, "state": $0.state, "generation": $0.generation] as [String: Any] },
            ]
            row["files"] = manifest.files.count
            rows.append(row)
        }
        if format == "json" {
            let object: [String: Any] = ["backups": rows, "directory": backups.root]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        guard !rows.isEmpty else {
            print("no token backups in \(backups.root)")
            return
        }
        let table = rows.map { row -> [String] in
            let keys = (row["keys"] as? [[String: Any]] ?? []).map { "\($0["key_id"] ?? "")(\($0["state"] ?? ""))" }
            return ["\(row["name"] ?? "")", "\(row["token_label"] ?? "-")", "\(row["reason"] ?? "-")",
                    (row["intact"] as? Bool) == true ? "ok" : "DAMAGED", keys.joined(separator: " ")]
        }
        print(Table.render(header: ["BACKUP", "TOKEN", "MADE_BY", "FILES", "KEY_IDS"], rows: table))
        print("in \(backups.root)")
    }
}

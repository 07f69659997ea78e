import ArgumentParser
import Foundation
import KMSServer
import KeyService
import Logging

/// How `serve`, `init` and `destroy` use the key history and the token backups.
enum KeyStateKeeping {
    static func history(_ token: TokenOptions, _ settings: SettingsResolver) throws -> KeyHistory {
        let names = try token.names(settings)
        return KeyHistory(stateDirectory: names.stateDirectory, modulePath: names.module, tokenLabel: names.label)
    }

    /// The refusal of a token that lacks keys in the history, with the fix; nil when nothing is missing.
    static func rollbackMessage(_ record: KeyHistory.Record, keys: [RootKey], history: KeyHistory) -> String? {
        let missing = record.missing(from: keys)
        guard !missing.isEmpty else { return nil }
        let newest = keys.map(\.generation).max() ?? 0
        let list = missing.map { "\($0.keyID) (generation \($0.generation))" }.joined(separator: ", ")
        let what = keys.isEmpty ? "holds no root key" : "lacks \(missing.count) root key(s)"
        return """
        the token '\(record.tokenLabel)' \(what) that p11kms has served from it: \(list). Its newest key is \
        generation \(newest); generation \(record.newestGeneration) was served (key history \(history.path)). The token \
        was rolled back (restored from an older copy or backup), and Secrets wrapped under those keys cannot be read. \
        Fix: restore the newest token backup ('p11kms token-backups' lists them; README, "Restoring the token from a \
        backup") or copy the token from a node that has those keys, then start again. Only if nothing was ever \
        encrypted under them that is still needed: run once with --accept-key-rollback (P11KMS_ACCEPT_KEY_ROLLBACK=true), \
        which records them as lost.
        """
    }

    /// `serve` after opening the token: refuses a rolled-back token (exit 1) unless accepted, records the token's
    /// keys, and backs the token directory up when it changed since the newest backup (SoftHSM only).
    static func atServeStart(ring: KeyRing, token: TokenOptions, settings: SettingsResolver, backup: BackupOptions,
                             acceptRollback: Bool, logger: Logger) throws -> KeyHistory {
        let history = try history(token, settings)
        let keep = try backup.keep(settings)
        do {
            if let record = try history.load(), let message = rollbackMessage(record, keys: ring.keys, history: history) {
                guard acceptRollback else { fail("not serving: " + message) }
                let missing = record.missing(from: ring.keys).map(\.keyID)
                try history.recordAccepted(missing)
                logger.warning("serving a rolled-back token (--accept-key-rollback): its missing keys are recorded as lost",
                               metadata: ["missing_key_ids": "\(missing.joined(separator: ","))", "key_history": "\(history.path)"])
            }
            try history.recordSeen(ring.keys)
        } catch let error as StateDirectoryError {
            fail("not serving: the key history cannot be kept: \(error) (state-dir)")
        }
        backUpIfChanged(ring: ring, token: token, settings: settings, keep: keep, reason: "serve start", logger: logger)
        return history
    }

    /// While serving: whenever the key list changes, the new keys join the history and the token directory is
    /// backed up if it changed (a token copied in from another node, a rotation by a command on another host).
    static func watch(_ health: HealthMonitor, ring: KeyRing, history: KeyHistory, token: TokenOptions,
                      settings: SettingsResolver, backup: BackupOptions, logger: Logger) throws {
        let keep = try backup.keep(settings)
        let names = try token.names(settings)
        let directory = TokenBackups.softHSMTokenDirectory(modulePath: names.module)
        health.onChange { _, keyChanged in
            guard keyChanged else { return }
            let keys = ring.keys
            do {
                let record = try history.recordSeen(keys)
                let missing = record.missing(from: keys)
                if !missing.isEmpty {
                    logger.error("the token lost keys this plugin has served (rolled back while serving?); the next start refuses it",
                                 metadata: ["missing_key_ids": "\(missing.map(\.keyID).joined(separator: ","))"])
                }
            } catch {
                logger.error("cannot update the key history", metadata: ["error": "\(error)"])
            }
            guard keep > 0, let directory else { return }
            let backups = TokenBackups(stateDirectory: names.stateDirectory, tokenDirectory: directory)
            backUp(backups, names: names, keys: keys, keep: keep, reason: "key list changed", logger: logger)
        }
    }

    private static func backUpIfChanged(ring: KeyRing, token: TokenOptions, settings: SettingsResolver, keep: Int,
                                        reason: String, logger: Logger) {
        guard keep > 0, let names = try? token.names(settings),
              let directory = TokenBackups.softHSMTokenDirectory(modulePath: names.module) else { return }
        backUp(TokenBackups(stateDirectory: names.stateDirectory, tokenDirectory: directory), names: names,
               keys: ring.keys, keep: keep, reason: reason, logger: logger)
    }

    private static func backUp(_ backups: TokenBackups, names: (module: String, label: String, stateDirectory: String),
                               keys: [RootKey], keep: Int, reason: String, logger: Logger) {
        do {
            guard try backups.changedSinceNewest() else {
                logger.info("token directory unchanged since the newest backup", metadata: ["backup": "\(backups.newest()?.path ?? "")"])
                return
            }
            let made = try backups.make(tokenLabel: names.label, modulePath: names.module, keys: keys, reason: reason, keep: keep)
            logger.notice("backed up the token directory", metadata: [
                "token_directory": "\(backups.tokenDirectory)", "backup": "\(made.path)", "files": "\(made.files)",
                "bytes": "\(made.bytes)", "milliseconds": "\(Int(made.seconds * 1000))",
            ])
        } catch {
            logger.error("the token directory was not backed up", metadata: ["error": "\(error)"])
        }
    }

    /// `init` on a token without keys: refuses (exit 1) when the history expects keys from this token, unless
    /// accepted (then they are recorded as lost).
    static func beforeInit(ring: KeyRing, token: TokenOptions, settings: SettingsResolver, acceptRollback: Bool) {
        guard ring.keys.isEmpty else { return }
        do {
            let history = try history(token, settings)
            guard let record = try history.load(), record.expectsKeys,
                  let message = rollbackMessage(record, keys: [], history: history) else { return }
            guard acceptRollback else { fail("not creating a first key: " + message) }
            try history.recordAccepted(record.missing(from: []).map(\.keyID))
            FileHandle.standardError.write(Data("the keys of the key history \(history.path) are recorded as lost (--accept-key-rollback)\n".utf8))
        } catch {
            fail("init: the key history cannot be read: \(error)")
        }
    }
}

import ArgumentParser
import EtcdAudit
import Foundation
import KeyService
import PKCS11

/// Opens the token named by the shared flags, failing with a clear message. A PIN the token rejected, now or on an
/// earlier start (the record in the state directory), ends the process with exit status 78 without a second
/// C_Login.
func openKeyRing(_ options: TokenOptions, settings: SettingsResolver? = nil) throws -> KeyRing {
    let settings = try settings ?? options.resolver()
    let resolved = try options.resolvedToken(settings)
    let configuration = resolved.configuration
    let record = PINRejectionRecord(stateDirectory: resolved.stateDirectory, modulePath: configuration.modulePath,
                                    tokenLabel: configuration.tokenLabel, pinSource: resolved.pinSource)
    record.refuseRecordedPIN(configuration.pin)
    let token = Token(configuration: configuration)
    do {
        try token.connect()
    } catch {
        if case .pinRejected = error.kind { record.recordAndExit(configuration.pin, error: error) }
        fail("cannot open the token (\(configuration.modulePath), label \(configuration.tokenLabel)): \(error)"
             + options.openingHint(error, modulePath: configuration.modulePath, settings: settings))
    }
    record.clear()
    let ring = KeyRing(token: token)
    do {
        try ring.refresh()
    } catch {
        fail("cannot read the root keys: \(error)")
    }
    return ring
}

func parseKeyID(_ string: String) -> RootKeyID {
    guard let id = RootKeyID(keyID: string) else {
        fail("\"\(string)\" is not a p11kms key_id (p11kms- followed by 32 hex digits)", code: 2)
    }
    return id
}

struct Rotate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a new root key inside the token and make it current; prints its key_id.",
        discussion: """
        A running 'p11kms serve' on the same token picks the new key up within a few seconds, without a restart.
        Older keys keep decrypting until they are retired. Crash-safe: killed at any instant, the token keeps exactly
        one current key, and running rotate again finishes the job.
        """)

    @OptionGroup var token: TokenOptions

    @OptionGroup var backup: BackupOptions

    @Flag(help: "Generate and verify the new key but leave it pending (not current): for copying the token to other nodes first. A later plain 'rotate' makes it current.")
    var stage = false

    func run() throws {
        try RotationLock.holding(token) { settings in try rotate(try openKeyRing(token, settings: settings)) }
    }

    /// Runs with the rotation lock held: `previous` and the new key are read by this run alone.
    private func rotate(_ ring: KeyRing) throws {
        let previous = ring.current
        if stage {
            do {
                let key = try ring.rotate(stageOnly: true)
                countSelfTest(ring, key)
                TokenBackups.afterKeyChange("rotate --stage", ring: ring, token: token, backup: backup)
                FileHandle.standardError.write(Data("staged \(key.keyID) (\(key.state.rawValue)); current is still \(previous?.keyID ?? "none"). Copy the token to every node, then run 'p11kms rotate' on each.\n".utf8))
                print(key.keyID)
            } catch {
                fail("rotate --stage failed: \(error)")
            }
            return
        }
        do {
            let key = try ring.rotate()
            if key.id != previous?.id { countSelfTest(ring, key) }
            TokenBackups.afterKeyChange("rotate", ring: ring, token: token, backup: backup)
            FileHandle.standardError.write(Data("rotated: \(previous?.keyID ?? "none") -> \(key.keyID) (\(key.label))\n".utf8))
            print(key.keyID)
        } catch {
            fail("rotate failed: \(error)")
        }
    }
}

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the root keys: key_id, label, creation time and state (current, active = decrypt-only, retired), and each key's last use as a running plugin saw it.")

    @OptionGroup var token: TokenOptions

    @Option(help: ArgumentHelp("Output: text or json.", valueName: "format"))
    var format: String = "text"

    @Option(help: ArgumentHelp("HTTP address of a running 'p11kms serve', whose /metrics adds each key's last Encrypt and Decrypt; 'off' to skip (env P11KMS_HTTP_LISTEN, config http-listen; default 127.0.0.1:8787).", valueName: "address"))
    var http: String?

    @Option(help: ArgumentHelp("Encryption budget per key shown in the JSON (env P11KMS_ENCRYPTION_BUDGET; default 2^32).", valueName: "n"))
    var encryptionBudget: String?

    func run() throws {
        let settings = try token.resolver()
        let ring = try openKeyRing(token, settings: settings)
        let keys = ring.keys
        let usage = KeyUsage.fetch(flag: http, settings: settings)
        usage?.checkCurrent(ring.current?.keyID)
        if format == "json" {
            let budget = try BudgetSetting.value(settings, flag: encryptionBudget)
            let reserved = (try? EncryptionBudget.readAll(ring.token)) ?? [:]
            var rows: [[String: Any]] = keys.map {
                ["key_id": $0.keyID, "label": $0.label, "created": $0.createdRFC3339, "state": $0.state.rawValue, "generation": $0.generation,
                 "encryptions_reserved": reserved[$0.keyID].map { Int($0) } ?? 0, "encryption_budget": Int(budget)]
                    .merging(usage?.fields($0.keyID) ?? [:]) { a, _ in a }
            }
            // Objects labelled like root keys that are never used: state "invalid" and the reason.
            rows += ring.invalidKeys.map {
                ["key_id": $0.keyID ?? "", "label": $0.label, "created": $0.createdRFC3339, "state": "invalid",
                 "generation": $0.generation, "reason": $0.problems.joined(separator: ", ")]
            }
            var object: [String: Any] = ["keys": rows]
            if let usage { object["plugin"] = usage.summary }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let header = ["KEY_ID", "STATE", "CREATED", "LABEL"] + (usage == nil ? [] : ["LAST_ENCRYPT", "LAST_DECRYPT"])
        var rows = keys.reversed().map { [$0.keyID, $0.state.rawValue, $0.createdRFC3339, $0.label] + (usage?.cells($0.keyID) ?? []) }
        rows += ring.invalidKeys.map {
            [$0.keyID ?? "-", "invalid", $0.createdRFC3339, $0.label] + (usage == nil ? [] : ["-", "-"])
        }
        print(Table.render(header: header, rows: rows))
        for bad in ring.invalidKeys {
            FileHandle.standardError.write(Data("warning: \(bad); it is never used\n".utf8))
        }
    }
}

struct Retire: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a non-current root key from decrypting, reversibly ('p11kms restore' undoes it).")

    @OptionGroup var token: TokenOptions

    @OptionGroup var backup: BackupOptions

    @Argument(help: "The key_id to retire.")
    var keyID: String

    func run() throws {
        let id = parseKeyID(keyID)
        let ring = try openKeyRing(token)
        do {
            let key = try ring.retire(id)
            TokenBackups.afterKeyChange("retire", ring: ring, token: token, backup: backup)
            FileHandle.standardError.write(Data("\(key.keyID) is \(key.state.rawValue); Secrets wrapped under it cannot be read until it is restored\n".utf8))
        } catch {
            fail("retire failed: \(error)")
        }
    }
}

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Let a retired root key decrypt again.")

    @OptionGroup var token: TokenOptions

    @OptionGroup var backup: BackupOptions

    @Argument(help: "The key_id to restore.")
    var keyID: String

    func run() throws {
        let id = parseKeyID(keyID)
        let ring = try openKeyRing(token)
        do {
            let key = try ring.restore(id)
            TokenBackups.afterKeyChange("restore", ring: ring, token: token, backup: backup)
            FileHandle.standardError.write(Data("\(key.keyID) is \(key.state.rawValue)\n".utf8))
        } catch {
            fail("restore failed: \(error)")
        }
    }
}

struct Destroy: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete a retired root key for good. Every Secret still wrapped under it becomes unreadable.")

    @OptionGroup var token: TokenOptions

    @OptionGroup var backup: BackupOptions

    @Argument(help: "The key_id to destroy (must be retired).")
    var keyID: String

    @Flag(help: "Confirm that the key is to be deleted for good.")
    var yesDestroyForever = false

    @Option(help: ArgumentHelp("Output of 'p11kms audit --verify --format json': refuse unless it proves nothing is stored under the key (see README, \"Auditing etcd\").", valueName: "file"))
    var auditJson: String?

    @Option(help: ArgumentHelp("Oldest --audit-json accepted: seconds or 30m, 1h, 2d (env P11KMS_AUDIT_MAX_AGE; default 1h).", valueName: "age"))
    var auditMaxAge: String?

    @Option(help: ArgumentHelp("kube-apiserver's --etcd-prefix that --audit-json must have read (env P11KMS_ETCD_PREFIX; default /registry).", valueName: "prefix"))
    var etcdPrefix: String?

    func run() throws {
        let id = parseKeyID(keyID)
        if let auditJson {
            let settings = try token.resolver()
            let maxAgeSetting = settings.resolve("audit-max-age", flag: auditMaxAge)
            guard let text = maxAgeSetting.value, let maxAge = AuditProof.parseDuration(text) else {
                fail("audit-max-age must be a positive duration such as 3600, 30m, 1h or 2d (from \(maxAgeSetting.source))", code: 2)
            }
            let prefix = settings.resolve("etcd-prefix", flag: etcdPrefix).value ?? "/registry"
            checkAudit(auditJson, keyID: id.keyID, maxAge: maxAge, etcdPrefix: prefix)
        }
        FileHandle.standardError.write(Data("""
        WARNING: destroying \(id.keyID) deletes it from the token for good. Every Secret (and every KMS v1 value)
        still wrapped under it becomes unreadable forever. Prove first that nothing uses it:
        'p11kms audit --verify' must report no Secret under this key_id.

        """.utf8))
        guard yesDestroyForever else {
            fail("not destroyed: add --yes-destroy-forever to confirm", code: 2)
        }
        let settings = try token.resolver()
        let ring = try openKeyRing(token, settings: settings)
        // Recorded before the key goes, so that no plugin ever takes its absence for a rollback.
        let history = try KeyStateKeeping.history(token, settings)
        let wasRecorded = (try? history.load())??.destroyed[id.keyID] != nil
        do {
            try history.recordDestroyed(id.keyID)
        } catch {
            fail("not destroyed: the key history cannot record it: \(error)")
        }
        do {
            try ring.destroy(id)
            FileHandle.standardError.write(Data("destroyed \(id.keyID)\n".utf8))
        } catch {
            if !wasRecorded, ring.key(id) != nil { _ = try? history.update { $0.destroyed[id.keyID] = nil } }
            fail("destroy failed: \(error)")
        }
        TokenBackups.afterKeyChange("destroy", ring: ring, token: token, backup: backup)
    }
}

extension Destroy {
    /// The audit is the proof that a key is unused (AuditProof's rules); any hole in it refuses the destroy.
    func checkAudit(_ path: String, keyID: String, maxAge: Double, etcdPrefix: String) {
        guard let data = FileManager.default.contents(atPath: path) else { fail("cannot read --audit-json \(path)", code: 2) }
        let proof: AuditProof
        switch Result(catching: { () throws(AuditProofError) in try AuditProof.parse(data) }) {
        case .success(let value): proof = value
        case .failure(let error): fail("\(path) is \(error.message)", code: 2)
        }
        let refusals = proof.refusals(keyID: keyID, now: Date(), maxAge: maxAge, etcdPrefix: etcdPrefix)
        if !refusals.isEmpty {
            fail("not destroyed: the audit in \(path) does not prove \(keyID) unused:\n  - " + refusals.joined(separator: "\n  - "), code: 1)
        }
        let scope = proof.scope!
        FileHandle.standardError.write(Data("the audit in \(path) (\(scope.time), etcd revision \(scope.revision), \(scope.resources.joined(separator: ", ")) under \(scope.etcd_prefix)) shows nothing under \(keyID) (\(proof.total) values audited)\n".utf8))
    }
}

enum Table {
    static func render(header: [String], rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}

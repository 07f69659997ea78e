import ArgumentParser
import Foundation
import KeyService
import PKCS11

/// Opens the token named by the shared flags, failing with a clear message.
func openKeyRing(_ options: TokenOptions, settings: SettingsResolver? = nil) throws -> KeyRing {
    let settings = try settings ?? options.resolver()
    let configuration = try options.resolved(settings)
    let token = Token(configuration: configuration)
    do {
        try token.connect()
    } catch {
        fail("cannot open the token (\(configuration.modulePath), label \(configuration.tokenLabel)): \(error)"
             + options.openingHint(error, modulePath: configuration.modulePath, settings: settings))
    }
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

    @Flag(help: "Generate and verify the new key but leave it pending (not current): for copying the token to other nodes first. A later plain 'rotate' makes it current.")
    var stage = false

    func run() throws {
        let ring = try openKeyRing(token)
        let previous = ring.current
        if stage {
            do {
                let key = try ring.rotate(stageOnly: true)
                FileHandle.standardError.write(Data("staged \(key.keyID) (\(key.state.rawValue)); current is still \(previous?.keyID ?? "none"). Copy the token to every node, then run 'p11kms rotate' on each.\n".utf8))
                print(key.keyID)
            } catch {
                fail("rotate --stage failed: \(error)")
            }
            return
        }
        do {
            let key = try ring.rotate()
            FileHandle.standardError.write(Data("rotated: \(previous?.keyID ?? "none") -> \(key.keyID) (\(key.label))\n".utf8))
            print(key.keyID)
        } catch {
            fail("rotate failed: \(error)")
        }
    }
}

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the root keys: key_id, label, creation time and state (current, active = decrypt-only, retired).")

    @OptionGroup var token: TokenOptions

    @Option(help: ArgumentHelp("Output: text or json.", valueName: "format"))
    var format: String = "text"

    func run() throws {
        let ring = try openKeyRing(token)
        let keys = ring.keys
        if format == "json" {
            let rows: [[String: Any]] = keys.map {
                ["key_id": $0.keyID, "label": $0.label, "created": $0.createdRFC3339, "state": $0.state.rawValue, "generation": $0.generation]
            }
            let data = try JSONSerialization.data(withJSONObject: ["keys": rows], options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let header = ["KEY_ID", "STATE", "CREATED", "LABEL"]
        let rows = keys.reversed().map { [$0.keyID, $0.state.rawValue, $0.createdRFC3339, $0.label] }
        print(Table.render(header: header, rows: rows))
    }
}

struct Retire: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a non-current root key from decrypting, reversibly ('p11kms restore' undoes it).")

    @OptionGroup var token: TokenOptions

    @Argument(help: "The key_id to retire.")
    var keyID: String

    func run() throws {
        let id = parseKeyID(keyID)
        let ring = try openKeyRing(token)
        do {
            let key = try ring.retire(id)
            FileHandle.standardError.write(Data("\(key.keyID) is \(key.state.rawValue); Secrets wrapped under it cannot be read until it is restored\n".utf8))
        } catch {
            fail("retire failed: \(error)")
        }
    }
}

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Let a retired root key decrypt again.")

    @OptionGroup var token: TokenOptions

    @Argument(help: "The key_id to restore.")
    var keyID: String

    func run() throws {
        let id = parseKeyID(keyID)
        let ring = try openKeyRing(token)
        do {
            let key = try ring.restore(id)
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

    @Argument(help: "The key_id to destroy (must be retired).")
    var keyID: String

    @Flag(help: "Confirm that the key is to be deleted for good.")
    var yesDestroyForever = false

    @Option(help: ArgumentHelp("Output of 'p11kms audit --verify --format json': refuse if any Secret in it is still stored under the key.", valueName: "file"))
    var auditJson: String?

    func run() throws {
        let id = parseKeyID(keyID)
        if let auditJson { try checkAudit(auditJson, keyID: id.keyID) }
        FileHandle.standardError.write(Data("""
        WARNING: destroying \(id.keyID) deletes it from the token for good. Every Secret (and every KMS v1 value)
        still wrapped under it becomes unreadable forever. Prove first that nothing uses it:
        'p11kms audit --verify' must report no Secret under this key_id.

        """.utf8))
        guard yesDestroyForever else {
            fail("not destroyed: add --yes-destroy-forever to confirm", code: 2)
        }
        let ring = try openKeyRing(token)
        do {
            try ring.destroy(id)
            FileHandle.standardError.write(Data("destroyed \(id.keyID)\n".utf8))
        } catch {
            fail("destroy failed: \(error)")
        }
    }
}

extension Destroy {
    /// The audit is the proof that a key is unused: every Secret it lists under the key blocks the destroy.
    func checkAudit(_ path: String, keyID: String) throws {
        guard let data = FileManager.default.contents(atPath: path),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let secrets = object["secrets"] as? [[String: Any]] else {
            fail("\(path) is not the JSON output of 'p11kms audit --format json'", code: 2)
        }
        let using = secrets.filter { ($0["key_id"] as? String) == keyID }
        if !using.isEmpty {
            let names = using.prefix(10).map { "\($0["namespace"] as? String ?? "")/\($0["name"] as? String ?? "")" }
            fail("not destroyed: the audit in \(path) lists \(using.count) Secret(s) still stored under \(keyID), e.g. \(names.joined(separator: ", ")); re-encrypt them first", code: 1)
        }
        if let verify = object["verify"] as? [String: Any], let failures = verify["failed"] as? [Any], !failures.isEmpty {
            fail("not destroyed: the audit in \(path) reports \(failures.count) data key(s) that could not be unwrapped; resolve them first", code: 1)
        }
        if let attributes = try? FileManager.default.attributesOfItem(atPath: path), let modified = attributes[.modificationDate] as? Date,
           Date().timeIntervalSince(modified) > 24 * 3600 {
            FileHandle.standardError.write(Data("warning: \(path) is more than a day old; run the audit again for a current proof\n".utf8))
        }
        FileHandle.standardError.write(Data("the audit in \(path) shows no Secret under \(keyID) (\(secrets.count) Secrets audited)\n".utf8))
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

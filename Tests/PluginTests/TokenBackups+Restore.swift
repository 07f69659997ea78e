import Foundation
import Testing
import TestSupport

struct BackupListing: Decodable {
    struct Key: Decodable { let key_id: String; let state: String; let generation: Int }
    struct Backup: Decodable {
        let name: String; let path: String; let reason: String; let token_label: String; let token_folder: String?
        let intact: Bool; let keys: [Key]
    }
    let backups: [Backup]
}

extension PluginProcess {
    func tokenBackups() throws -> BackupListing {
        let result = try run(["token-backups", "--format", "json"])
        guard result.status == 0 else { throw FixtureError("token-backups failed: \(result.stderr)") }
        return try JSONDecoder().decode(BackupListing.self, from: Data(result.stdout.utf8))
    }

    /// Runs the README's restore procedure ("Restoring the token from a backup") with this plugin's state
    /// directory and token directory in place of the two paths its first line sets.
    func runREADMERestoreProcedure() throws -> Command.Result {
        let readme = try String(contentsOf: RepositoryRoot.url.appendingPathComponent("README.md"), encoding: .utf8)
        let section = try #require(readme.range(of: "#### Restoring the token from a backup\n"))
        let block = try #require(readme[section.upperBound...].range(of: "```sh\n"))
        let end = try #require(readme[block.upperBound...].range(of: "```"))
        var lines = readme[block.upperBound..<end.lowerBound].split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("state=/var/lib/p11kms/state tokendir=") == true, "the block starts by naming the two paths")
        lines[0] = "state='\(stateDirectory)' tokendir='\(hsm.tokenDirectory.path)'"
        let binDirectory = URL(fileURLWithPath: PluginProcess.executable).deletingLastPathComponent().path
        var env = environment
        env["PATH"] = binDirectory + ":" + (env["PATH"] ?? "/usr/bin:/bin")
        return try Command.run("/bin/bash", ["-euo", "pipefail", "-c", lines.joined(separator: "\n")], environment: env)
    }
}

enum RepositoryRoot {
    /// The package root, found from this file's path.
    static var url: URL {
        var url = URL(fileURLWithPath: #filePath)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url }
        }
        return url
    }
}

@Suite("SoftHSM token backups")
struct TokenBackupRestoreTests {
    @Test("a torn token.object is repaired by the README's restore procedure: every key and every ciphertext is back")
    func tornTokenObjectIsRestored() throws {
        let plugin = try PluginProcess(name: "backup-restore")
        try plugin.start()
        let client = try plugin.client()
        var wrapped: [(ciphertext: Data, keyID: String, plaintext: [UInt8])] = []
        var v1Wrapped: [(Data, [UInt8])] = []
        func wrap() throws {
            let seed = randomBytes(32)
            let response = try client.encrypt(seed)
            wrapped.append((response.ciphertext, response.keyID, seed))
            let dek = randomBytes(32)
            v1Wrapped.append((try client.v1Encrypt(dek), dek))
        }
        try wrap()
        for _ in 0..<2 {
            let next = try plugin.rotate()
            _ = try plugin.waitForKey(next, client: client)
            try wrap()
        }
        let before = try plugin.keys()
        #expect(before.keys.count == 3)
        #expect(Set(wrapped.map(\.keyID)).count == 3)
        plugin.stop()

        // init and each rotate made one backup (the running plugin may add one when it sees a rotation before the
        // command's backup is written); the newest holds every key with its state.
        let listing = try plugin.tokenBackups()
        let reasons = listing.backups.map(\.reason)
        #expect(reasons.last == "init" && reasons.filter { $0 == "rotate" }.count == 2, "\(reasons)")
        #expect(reasons.allSatisfy { ["init", "rotate", "key list changed"].contains($0) }, "\(reasons)")
        let newest = try #require(listing.backups.first)
        #expect(newest.intact && newest.token_label == plugin.tokenLabel)
        #expect(newest.keys.map(\.key_id) == before.keys.map(\.key_id))
        #expect(newest.keys.map(\.state) == before.keys.map(\.state))
        var st = stat()
        #expect(lstat(newest.path, &st) == 0 && st.st_mode & 0o777 == 0o700, "backup folder mode \(String(st.st_mode & 0o777, radix: 8))")

        // The torn write: token.object truncated to nothing. SoftHSM no longer sees the token.
        let folder = try #require(plugin.hsm.tokenFolder(label: plugin.tokenLabel))
        #expect(folder.lastPathComponent == newest.token_folder)
        #expect(truncate(folder.appendingPathComponent("token.object").path, 0) == 0)
        let lost = try plugin.run(["keys"] + plugin.tokenArguments)
        #expect(lost.status == 1)
        #expect(lost.stderr.contains("no token labelled"), "\(lost.stderr)")
        // A torn token is never backed up over the good copies.
        let refused = try plugin.run(["restore", before.keys[0].key_id] + plugin.tokenArguments)
        #expect(refused.status == 1)
        #expect(try plugin.tokenBackups().backups.count == listing.backups.count)

        let restored = try plugin.runREADMERestoreProcedure()
        #expect(restored.status == 0, "\(restored.stderr)")
        #expect(restored.stdout.contains(newest.name), "the procedure's listing shows the backup: \(restored.stdout)")
        let damaged = try FileManager.default.contentsOfDirectory(atPath: plugin.hsm.root.path).filter { $0.hasPrefix("damaged-") }
        #expect(damaged.count == 1, "the damaged copy is kept outside the token directory")

        let after = try plugin.keys()
        #expect(after.keys.map(\.key_id) == before.keys.map(\.key_id))
        #expect(after.keys.map(\.state) == before.keys.map(\.state))
        try plugin.start()
        let again = try plugin.client()
        for (ciphertext, keyID, plaintext) in wrapped {
            #expect(try again.decrypt(ciphertext, keyID: keyID) == plaintext)
        }
        for (cipher, dek) in v1Wrapped {
            #expect(try again.v1Decrypt(cipher) == dek)
        }
        #expect(try again.status().keyID == before.current.first?.key_id)
        // The restored token equals the newest backup: serve made none at start.
        #expect(try plugin.tokenBackups().backups.count == listing.backups.count)
        #expect(plugin.log.contains("token directory unchanged since the newest backup"), "\(plugin.log)")
    }

    @Test("--token-backups N keeps the newest N; serve backs up a token directory changed behind its back")
    func retentionAndServeStart() throws {
        let plugin = try PluginProcess(name: "backup-keep")
        let keep = ["P11KMS_TOKEN_BACKUPS": "2"]
        for _ in 0..<3 {
            #expect(try plugin.run(["rotate"] + plugin.tokenArguments, environment: keep).status == 0)
        }
        let listing = try plugin.tokenBackups()
        #expect(listing.backups.count == 2)
        #expect(listing.backups.first?.keys.count == 4)
        #expect(listing.backups.allSatisfy { $0.intact })

        // A key made by another tool (no backup): serve finds the directory changed and backs it up at start.
        let other = try Command.run("/usr/bin/pkcs11-tool", [
            "--module", SoftHSMFixture.modulePath, "--token-label", plugin.tokenLabel, "--login", "--pin", SoftHSMFixture.userPIN,
            "--keygen", "--key-type", "AES:32", "--label", "not-p11kms", "--id", "77",
        ], environment: plugin.environment)
        #expect(other.status == 0, "\(other.stderr)")
        try plugin.start(environment: keep)
        #expect(plugin.log.contains("backed up the token directory"), "\(plugin.log)")
        let afterStart = try plugin.tokenBackups()
        #expect(afterStart.backups.first?.reason == "serve start")
        #expect(afterStart.backups.count == 2)
        plugin.stop()

        // Turned off: nothing more is written.
        #expect(try plugin.run(["rotate", "--token-backups", "0"] + plugin.tokenArguments).status == 0)
        #expect(try plugin.tokenBackups().backups.map(\.name) == afterStart.backups.map(\.name))
    }
}

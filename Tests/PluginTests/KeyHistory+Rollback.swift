import Foundation
import Testing
import TestSupport

extension PluginProcess {
    /// `serve` run to completion (a refusal exits before binding the socket).
    func serveRefused(_ extra: [String] = []) throws -> Command.Result {
        try run(["serve", "--listen", listen, "--http-listen", "off"] + tokenArguments + extra)
    }

    /// Replaces the token directory's contents with `copy`'s.
    func replaceTokenDirectory(with copy: URL) throws {
        let fm = FileManager.default
        for name in try fm.contentsOfDirectory(atPath: hsm.tokenDirectory.path) {
            try fm.removeItem(at: hsm.tokenDirectory.appendingPathComponent(name))
        }
        for name in try fm.contentsOfDirectory(atPath: copy.path) {
            try fm.copyItem(at: copy.appendingPathComponent(name), to: hsm.tokenDirectory.appendingPathComponent(name))
        }
    }

    /// The key history file's text, once it names `keyID` (the running plugin records a new key at its next refresh).
    func waitForHistory(containing keyID: String, timeout: TimeInterval = 10) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let files = (try? FileManager.default.contentsOfDirectory(atPath: stateDirectory)) ?? []
            if let name = files.first(where: { $0.hasPrefix("key-history-") && $0.hasSuffix(".json") }),
               let text = try? String(contentsOfFile: "\(stateDirectory)/\(name)", encoding: .utf8), text.contains(keyID) {
                return text
            }
            usleep(100_000)
        }
        throw FixtureError("the key history never named \(keyID)")
    }
}

@Suite("Rollback detection")
struct KeyHistoryRollbackTests {
    @Test("a token put back to an older copy is refused with the fix; the newest backup is not; --accept-key-rollback serves")
    func rolledBackTokenIsRefused() throws {
        let plugin = try PluginProcess(name: "rollback")
        try plugin.start()
        let client = try plugin.client()
        let key1 = plugin.initialKeyID
        let seed1 = randomBytes(32)
        let under1 = try client.encrypt(seed1)
        plugin.stop()
        let oldCopy = plugin.hsm.root.appendingPathComponent("old-tokens")
        try FileManager.default.copyItem(at: plugin.hsm.tokenDirectory, to: oldCopy)

        try plugin.start()
        let live = try plugin.client()
        let key2 = try plugin.rotate()
        let key3 = try plugin.rotate()
        _ = try plugin.waitForKey(key3, client: live)
        let seed3 = randomBytes(32)
        let under3 = try live.encrypt(seed3)
        #expect(under3.keyID == key3)
        let history = try plugin.waitForHistory(containing: key3)
        #expect(history.contains(key2) && history.contains(key1) && history.contains("\"newest_generation\" : 3"), "\(history)")
        plugin.stop()

        // The old copy: serve refuses, names the lost keys, the generations and the fix; no socket is bound.
        try plugin.replaceTokenDirectory(with: oldCopy)
        let refused = try plugin.serveRefused()
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("not serving"), "\(refused.stderr)")
        #expect(refused.stderr.contains("\(key2) (generation 2), \(key3) (generation 3)"), "\(refused.stderr)")
        #expect(refused.stderr.contains("Its newest key is generation 1; generation 3 was served"), "\(refused.stderr)")
        #expect(refused.stderr.contains("p11kms token-backups") && refused.stderr.contains("--accept-key-rollback"), "\(refused.stderr)")
        #expect(!refused.stderr.contains(key1 + " (generation"), "key1 is in the token")
        #expect(!FileManager.default.fileExists(atPath: plugin.socketPath))
        // Refused again on the next start: nothing was recorded as accepted.
        #expect(try plugin.serveRefused().status == 1)

        // The newest backup (made by the second rotate) holds every key: restoring it never trips the check.
        let restored = try plugin.runREADMERestoreProcedure()
        #expect(restored.status == 0, "\(restored.stderr)")
        try plugin.start()
        #expect(try plugin.client().decrypt(under3.ciphertext, keyID: key3) == seed3)
        #expect(try plugin.client().decrypt(under1.ciphertext, keyID: key1) == seed1)
        plugin.stop()

        // Accepting the rollback serves the old copy (key1 still decrypts), records the loss, and later starts need
        // no flag.
        try plugin.replaceTokenDirectory(with: oldCopy)
        try plugin.start(["--accept-key-rollback"])
        #expect(try plugin.client().status().keyID == key1)
        #expect(try plugin.client().decrypt(under1.ciphertext, keyID: key1) == seed1)
        #expect(plugin.log.contains("serving a rolled-back token"), "\(plugin.log)")
        plugin.stop()
        try plugin.start()
        plugin.stop()
    }

    @Test("init refuses an empty token when the history expects keys; destroy records what it deletes")
    func initOnEmptyTokenAndDestroy() throws {
        let plugin = try PluginProcess(name: "rollback-init")
        try plugin.start()
        let key1 = plugin.initialKeyID
        let key2 = try plugin.rotate()
        _ = try plugin.waitForKey(key2, client: try plugin.client())
        _ = try plugin.waitForHistory(containing: key2)
        // Retire and destroy key1 while the plugin runs: its absence is never taken for a rollback.
        #expect(try plugin.run(["retire", key1] + plugin.tokenArguments).status == 0)
        #expect(try plugin.run(["destroy", key1, "--yes-destroy-forever"] + plugin.tokenArguments).status == 0)
        usleep(2_500_000)
        plugin.stop()
        #expect(!plugin.log.contains("the token lost keys"), "\(plugin.log)")
        try plugin.start()
        plugin.stop()

        // A fresh token under the same label (the old one deleted): init refuses to create a first key.
        for name in try FileManager.default.contentsOfDirectory(atPath: plugin.hsm.tokenDirectory.path) {
            try FileManager.default.removeItem(at: plugin.hsm.tokenDirectory.appendingPathComponent(name))
        }
        try plugin.hsm.createToken(label: plugin.tokenLabel)
        let refused = try plugin.run(["init"] + plugin.tokenArguments)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("not creating a first key") && refused.stderr.contains("holds no root key"), "\(refused.stderr)")
        #expect(refused.stderr.contains(key2) && !refused.stderr.contains(key1), "\(refused.stderr)")
        #expect(try plugin.keys().keys.isEmpty, "nothing was created")
        let accepted = try plugin.run(["init", "--accept-key-rollback"] + plugin.tokenArguments)
        #expect(accepted.status == 0, "\(accepted.stderr)")
        let key = accepted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try plugin.keys().current.map(\.key_id) == [key])
        try plugin.start()
        #expect(try plugin.client().status().keyID == key)
    }
}

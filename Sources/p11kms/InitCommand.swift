import ArgumentParser
import Foundation
import KeyService
import PKCS11

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the first root key in the token if it has none (idempotent); prints the current key_id.")

    @OptionGroup var token: TokenOptions

    @OptionGroup var backup: BackupOptions

    @Flag(help: "Create a first key although this host's key history says the token had keys (a token re-created or restored from an empty copy); the missing keys are recorded as lost (env P11KMS_ACCEPT_KEY_ROLLBACK).")
    var acceptKeyRollback = false

    func run() throws {
        // Two inits at once (or an init and a rotate) must not both create a first key.
        try RotationLock.holding(token) { settings in try initialize(try openKeyRing(token, settings: settings), settings: settings) }
    }

    private func initialize(_ ring: KeyRing, settings: SettingsResolver) throws {
        KeyStateKeeping.beforeInit(ring: ring, token: token, settings: settings,
                                   acceptRollback: try settings.bool("accept-key-rollback", flag: acceptKeyRollback))
        do {
            let (key, created) = try ring.initialize()
            FileHandle.standardError.write(Data((created ? "created root key \(key.label)\n" : "the token already has a current root key (\(key.label))\n").utf8))
            if created {
                countSelfTest(ring, key)
                TokenBackups.afterKeyChange("init", ring: ring, token: token, backup: backup)
            }
            print(key.keyID)
        } catch {
            fail("init failed: \(error)")
        }
    }
}

import ArgumentParser
import Foundation
import KeyService
import PKCS11

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the first root key in the token if it has none (idempotent); prints the current key_id.")

    @OptionGroup var token: TokenOptions

    func run() throws {
        // Two inits at once (or an init and a rotate) must not both create a first key.
        try RotationLock.holding(token) { settings in try initialize(try openKeyRing(token, settings: settings)) }
    }

    private func initialize(_ ring: KeyRing) throws {
        do {
            let (key, created) = try ring.initialize()
            FileHandle.standardError.write(Data((created ? "created root key \(key.label)\n" : "the token already has a current root key (\(key.label))\n").utf8))
            print(key.keyID)
        } catch {
            fail("init failed: \(error)")
        }
    }
}

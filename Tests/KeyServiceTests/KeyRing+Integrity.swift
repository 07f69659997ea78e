import Foundation
import KeyService
import PKCS11
import Testing
import TestSupport

/// Objects labelled like root keys that the token does not describe as p11kms root keys, made outside p11kms with
/// OpenSC's pkcs11-tool in a real SoftHSM token.
@Suite("Root key integrity")
struct KeyRingIntegrityTests {
    /// A service on a fresh token of its own, and the token's label.
    private func service() throws -> (EnvelopeService, String) {
        let label = SoftHSMFixture.shared.takeToken()
        let token = Token(configuration: TokenConfiguration(
            modulePath: SoftHSMFixture.modulePath, tokenLabel: label, pin: Array(SoftHSMFixture.userPIN.utf8)))
        let ring = KeyRing(token: token)
        _ = try ring.initialize()
        return (EnvelopeService(keyRing: ring), label)
    }

    static let cases: [(flags: [String], keyType: String, problem: String)] = [
        (["--extractable"], "AES:32", "extractable"),
        (["--extractable"], "AES:32", "not sensitive"),
        (["--sensitive", "--private"], "AES:16", "value is 16 bytes, not 32"),
    ]

    @Test("a root-key label on an extractable, non-sensitive or short key: never current, never used, named",
          arguments: 0..<3)
    func badAttributes(index: Int) throws {
        let (service, token) = try service()
        let genuine = try #require(service.keyRing.current)
        let id = RootKeyID.random()
        let label = RootKey.label(generation: 999_999, createdAt: 1_800_000_000)
        let bad = KeyRingIntegrityTests.cases[index]
        try SoftHSMFixture.shared.generateKeyWithTool(token: token, label: label, idHex: String(id.keyID.dropFirst(7)),
                                                      keyType: bad.keyType, attributes: bad.flags)
        #expect(try service.refreshKeys())
        #expect(service.keyRing.current?.id == genuine.id, "the newer-labelled object must not become current")
        #expect(service.keyRing.key(id) == nil)
        let invalid = try #require(service.keyRing.invalidKeys.first)
        #expect(service.keyRing.invalidKeys.count == 1)
        #expect(invalid.id == id && invalid.label == label)
        #expect(invalid.problems.contains(bad.problem), "\(invalid.problems)")
        #expect(invalid.description.contains(label) && invalid.description.contains(id.keyID))

        // Encrypt stays on the genuine key; a ciphertext naming the invalid object is refused before the token.
        let seed = SecureRandom.bytes(32)
        let (ciphertext, key) = try service.encrypt(seed)
        #expect(key.id == genuine.id)
        #expect(try service.decrypt(ciphertext, expectedKeyID: key.keyID).plaintext == seed)
        let naming = Envelope(keyID: id, iv: SecureRandom.bytes(12), sealed: SecureRandom.bytes(48)).serialized()
        do {
            _ = try service.decrypt(naming, expectedKeyID: id.keyID)
            Issue.record("decrypt under an invalid root key object was attempted")
        } catch {
            #expect(error.code == .failedPrecondition && error.message.contains(label), "\(error)")
        }
        // Admin commands refuse it too.
        #expect(throws: KMSError.self) { _ = try service.keyRing.retire(id) }
        #expect(throws: KMSError.self) { try service.keyRing.destroy(id) }
        // A rotation still gives the next key a higher generation than any root-key label in the token.
        let next = try service.keyRing.rotate()
        #expect(next.generation == 1_000_000 && service.keyRing.current?.id == next.id)
    }

    @Test("a second object with the current key's CKA_ID makes both invalid: neither is used, both are named")
    func duplicateID() throws {
        let (service, token) = try service()
        let genuine = try #require(service.keyRing.current)
        let seed = SecureRandom.bytes(32)
        let (before, _) = try service.encrypt(seed)
        // Same label, same CKA_ID, sensitive and not extractable: as a backup restored next to the original would be.
        try SoftHSMFixture.shared.generateKeyWithTool(token: token, label: genuine.label,
                                                      idHex: String(genuine.keyID.dropFirst(7)),
                                                      attributes: ["--sensitive", "--private"])
        #expect(try service.refreshKeys())
        #expect(service.keyRing.current == nil)
        #expect(service.keyRing.keys.isEmpty)
        let invalid = service.keyRing.invalidKeys
        #expect(invalid.count == 2)
        #expect(invalid.allSatisfy { $0.id == genuine.id && $0.problems == ["CKA_ID shared with another root key object"] })
        do {
            _ = try service.encrypt(seed)
            Issue.record("encrypt succeeded with only twin root keys in the token")
        } catch {
            #expect(error.code == .unavailable, "\(error)")
        }
        do {
            _ = try service.decrypt(before, expectedKeyID: genuine.keyID)
            Issue.record("decrypt under a duplicated CKA_ID succeeded")
        } catch {
            #expect(error.code == .failedPrecondition && error.message.contains("CKA_ID shared"), "\(error)")
        }
        #expect(throws: KMSError.self) { _ = try service.keyRing.retire(genuine.id) }
    }
}

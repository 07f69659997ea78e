import PKCS11
import Testing
import TestSupport

/// The token layer's object API on a real SoftHSM token: what the key service builds on, without PKCS#11 types.
@Suite("Token objects (PKCS11's KeyObjects)")
struct KeyObjectsTests {
    private let iv = [UInt8](repeating: 7, count: 12)
    private let aad = Array("key objects test".utf8)
    private let plaintext = [UInt8](repeating: 0x5a, count: 32)

    @Test("a generated AES-256 key is usable, listed by label, and runs AES-GCM with and without its session copy")
    func generateAndUse() throws {
        let token = try makeToken("objects-generate")
        let id: [UInt8] = Array(0..<16)
        let made = try token.withObjects { (objects) throws(PKCS11Error) in
            try objects.generateAES256Key(id: id, label: "objects-test-key")
        }
        #expect(made.problems.isEmpty && made.decryptEnabled && made.id == id)
        let listed = try token.withObjects { (objects) throws(PKCS11Error) in
            try objects.secretKeys(labelled: { $0.hasPrefix("objects-test") })
        }
        #expect(listed == [made])
        for copy in [false, true] {
            let key = KeyReference(id: id, name: "objects-test-key", sessionCopy: copy)
            let sealed = try token.encryptAESGCM(key, iv: iv, aad: aad, plaintext: plaintext, deadline: nil)
            #expect(sealed.count == plaintext.count + 16 && sealed.prefix(32) != plaintext[...])
            #expect(try token.decryptAESGCM(key, iv: iv, aad: aad, ciphertext: sealed, deadline: nil) == plaintext)
            var forged = sealed
            forged[0] ^= 1
            do {
                _ = try token.decryptAESGCM(key, iv: iv, aad: aad, ciphertext: forged, deadline: nil)
                Issue.record("a forged ciphertext decrypted")
            } catch {
                #expect(error.failure == .authenticationFailed, "\(error)")
            }
        }
        #expect(token.sessionKeyCopies.status.active == 1)
    }

    @Test("a key switched off is refused by the token (keyDisabled), switched on works again, destroyed is gone")
    func switchOffAndDestroy() throws {
        let token = try makeToken("objects-switch")
        let id: [UInt8] = Array(16..<32)
        let key = KeyReference(id: id, name: "objects-switch-key", sessionCopy: false)
        let made = try token.withObjects { (objects) throws(PKCS11Error) in
            try objects.generateAES256Key(id: id, label: "objects-switch-key")
        }
        let sealed = try token.encryptAESGCM(key, iv: iv, aad: aad, plaintext: plaintext, deadline: nil)
        try token.withObjects { (objects) throws(PKCS11Error) in try objects.setEnabled(made, false) }
        let off = try token.withObjects { (objects) throws(PKCS11Error) in try objects.secretKeys(labelled: { $0 == "objects-switch-key" }) }
        #expect(off.map(\.decryptEnabled) == [false])
        do {
            _ = try token.decryptAESGCM(key, iv: iv, aad: aad, ciphertext: sealed, deadline: nil)
            Issue.record("a switched-off key decrypted")
        } catch {
            #expect(error.failure == .keyDisabled, "\(error)")
        }
        try token.withObjects { (objects) throws(PKCS11Error) in try objects.setEnabled(made, true) }
        #expect(try token.decryptAESGCM(key, iv: iv, aad: aad, ciphertext: sealed, deadline: nil) == plaintext)
        try token.withObjects { (objects) throws(PKCS11Error) in try objects.destroy(made) }
        #expect(try token.withObjects { (objects) throws(PKCS11Error) in try objects.secretKeys(labelled: { _ in true }) }.isEmpty)
        do {
            _ = try token.encryptAESGCM(key, iv: iv, aad: aad, plaintext: plaintext, deadline: nil)
            Issue.record("a destroyed key encrypted")
        } catch {
            #expect(error.description.contains("not in the token"), "\(error)")
        }
    }

    @Test("data objects: stored, found by exact label or prefix, destroyed one by one")
    func dataObjects() throws {
        let token = try makeToken("objects-data")
        try token.withObjects { (objects) throws(PKCS11Error) in
            try objects.createDataObject(label: "objects-count-a", application: "test", value: Array("1".utf8))
            try objects.createDataObject(label: "objects-count-a", application: "test", value: Array("2".utf8))
            try objects.createDataObject(label: "objects-count-b", application: "test", value: Array("3".utf8))
        }
        let (exact, all) = try token.withObjects { (objects) throws(PKCS11Error) in
            (try objects.dataObjects(labelPrefix: "objects-count-a", exact: true), try objects.dataObjects(labelPrefix: "objects-count-"))
        }
        #expect(exact.map { String(decoding: $0.value, as: UTF8.self) }.sorted() == ["1", "2"])
        #expect(all.count == 3)
        let first = try #require(exact.first)
        try token.withObjects { (objects) throws(PKCS11Error) in try objects.destroy(first) }
        let left = try token.withObjects { (objects) throws(PKCS11Error) in try objects.dataObjects(labelPrefix: "objects-count-") }
        #expect(left.count == 2 && !left.contains(first))
    }
}

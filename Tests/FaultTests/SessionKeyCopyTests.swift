import Foundation
import KeyService
import PKCS11
import Synchronization
import Testing
import TestSupport

/// The session-object fast path through the fault-injecting module (its call log shows every C_CopyObject). Part
/// of the serialized recovery suite: the fault plan and call log are process-wide.
extension RecoveryTests {
    private func copies(_ calls: [(function: String, rv: UInt)]) -> Int {
        calls.filter { $0.function == "C_CopyObject" && $0.rv == 0 }.count
    }

    private func roundTrips(_ service: EnvelopeService, _ count: Int = 5) throws {
        for _ in 0..<count {
            let seed = SecureRandom.bytes(32)
            let (ciphertext, key) = try service.encrypt(seed)
            #expect(try service.decrypt(ciphertext, expectedKeyID: key.keyID).plaintext == seed)
        }
    }

    @Test("round trips run with one session copy per key, made once")
    func copiedOnce() throws {
        let service = try makeFaultService()
        let mark = faults.logMark()
        try roundTrips(service, 20)
        #expect(copies(faults.calls(since: mark)) == 1)
        #expect(service.token.sessionKeyCopies.status == .init(active: 1, refused: 0, enabled: true))
    }

    @Test("only the current key runs with a copy; a key rotated away and retired elsewhere stops decrypting at the next refresh")
    func retireDropsTheCopy() throws {
        let service = try makeFaultService()
        let seed = SecureRandom.bytes(32)
        let (old, oldKey) = try service.encrypt(seed)
        #expect(service.token.sessionKeyCopies.status.active == 1)

        // Another process on the same token (its own Token and key ring) rotates, then retires the old key, before
        // this service has refreshed: the old key is still current here and its copy still decrypts.
        let other = KeyRing(token: Token(configuration: service.token.configuration))
        try other.refresh()
        let newKey = try other.rotate()
        #expect(try other.retire(oldKey.id).state == .retired)
        // The refresh (the plugin's health probe, every probe interval) drops the copy; the token object refuses.
        #expect(try service.refreshKeys())
        #expect(service.keyRing.current?.id == newKey.id)
        #expect(service.token.sessionKeyCopies.status.active == 0)
        do {
            _ = try service.decrypt(old, expectedKeyID: oldKey.keyID)
            Issue.record("a retired key decrypted after the refresh")
        } catch {
            #expect(error.code == .failedPrecondition && error.message.contains("retired"), "\(error)")
        }
        _ = try other.restore(oldKey.id)
        #expect(try service.decrypt(old, expectedKeyID: oldKey.keyID).plaintext == seed, "a restore works at once")
        // Decrypts under the older key use its token object: retiring it now is refused at once, no refresh needed.
        _ = try service.encrypt(seed)
        #expect(service.token.sessionKeyCopies.status.active == 1)
        _ = try other.retire(oldKey.id)
        #expect(throws: KMSError.self) { _ = try service.decrypt(old, expectedKeyID: oldKey.keyID) }
    }

    @Test("copies are made again after a re-initialisation of the module")
    func rebuiltAfterReinitialisation() throws {
        defer { faults.clearPlan() }
        let service = try makeFaultService()
        try roundTrips(service, 2)
        let generation = try PKCS11Module.load(path: faults.modulePath).initialization
        let mark = faults.logMark()
        faults.setPlan("fail C_Encrypt CKR_DEVICE_REMOVED 1")
        try roundTrips(service, 3)
        #expect(try PKCS11Module.load(path: faults.modulePath).initialization > generation)
        #expect(copies(faults.calls(since: mark)) == 1, "one new copy after the re-initialisation")
        #expect(service.token.sessionKeyCopies.status.active == 1)
    }

    @Test("a real storage outage: unavailable while away (no copy outlives the re-initialisation), a new copy once back")
    func rebuiltAfterOutage() throws {
        let fixture = SoftHSMFixture.shared
        let label = fixture.takeToken()
        let service = try makeFaultService(reconnectInterval: .milliseconds(200), label: label)
        let seed = SecureRandom.bytes(32)
        let (ciphertext, key) = try service.encrypt(seed)
        let folder = try #require(fixture.tokenFolder(label: label))
        let away = fixture.root.appendingPathComponent("away-copy-\(folder.lastPathComponent)")
        try FileManager.default.moveItem(at: folder, to: away)
        var moved = true
        defer { if moved { try? FileManager.default.moveItem(at: away, to: folder) } }
        // The probe's refresh finds the token gone and re-initialises the module: the copies go with it.
        #expect(throws: PKCS11Error.self) { try service.keyRing.refresh() }
        #expect(throws: KMSError.self) { _ = try service.encrypt(seed) }
        #expect(throws: KMSError.self) { _ = try service.decrypt(ciphertext, expectedKeyID: key.keyID) }

        let mark = faults.logMark()
        try FileManager.default.moveItem(at: away, to: folder)
        moved = false
        #expect(try eventually(within: .seconds(5)) { try service.decrypt(ciphertext, expectedKeyID: key.keyID) }.plaintext == seed)
        try roundTrips(service, 3)
        #expect(copies(faults.calls(since: mark)) == 1)
    }

    @Test("a module that refuses C_CopyObject: the token object is used, the refusal is told once and counted")
    func refusedCopy() throws {
        defer { faults.clearPlan() }
        let service = try makeFaultService()
        let told = Mutex<[String]>([])
        service.token.sessionKeyCopies.onRefused { reason in told.withLock { $0.append(reason) } }
        faults.setPlan("fail C_CopyObject 0x1B")  // CKR_ACTION_PROHIBITED
        let mark = faults.logMark()
        try roundTrips(service, 5)
        #expect(faults.calls(since: mark).filter { $0.function == "C_CopyObject" }.count == 1, "asked once per key")
        #expect(service.token.sessionKeyCopies.status == .init(active: 0, refused: 1, enabled: true))
        #expect(told.withLock { $0 } == ["C_CopyObject failed: CKR_ACTION_PROHIBITED"])
    }

    @Test("copies turned off: no C_CopyObject, round trips with the token objects, existing copies destroyed")
    func turnedOff() throws {
        let service = try makeFaultService()
        try roundTrips(service, 2)
        #expect(service.token.sessionKeyCopies.status.active == 1)
        service.token.sessionKeyCopies.setEnabled(false)
        let mark = faults.logMark()
        _ = try service.refreshKeys()
        #expect(service.token.sessionKeyCopies.status.active == 0)
        try roundTrips(service, 5)
        let calls = faults.calls(since: mark)
        #expect(copies(calls) == 0)
        #expect(calls.contains { $0.function == "C_DestroyObject" && $0.rv == 0 })
    }
}

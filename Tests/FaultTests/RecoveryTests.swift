import CPKCS11
import Foundation
import KeyService
import PKCS11
import Testing
import TestSupport

/// A service on a pooled token of its own, reached through the fault-injecting module.
func makeFaultService(maxSessions: Int = 4, reconnectInterval: Duration = .milliseconds(100),
                      label: String = SoftHSMFixture.shared.takeToken()) throws -> EnvelopeService {
    let faults = FaultModule.shared
    let token = Token(configuration: TokenConfiguration(
        modulePath: faults.modulePath, tokenLabel: label, pin: Array(SoftHSMFixture.userPIN.utf8),
        maxSessions: maxSessions, reconnectInterval: reconnectInterval))
    let ring = KeyRing(token: token)
    _ = try ring.initialize()
    return EnvelopeService(keyRing: ring)
}

/// Tries `body` every 50 ms until it succeeds or `timeout` passes.
func eventually<T>(within timeout: Duration, _ body: () throws -> T) throws -> T {
    let deadline = ContinuousClock.now + timeout
    while true {
        do {
            return try body()
        } catch {
            if ContinuousClock.now >= deadline { throw error }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }
}

/// Recovery through the fault-injecting module. The plan is process-wide, so these tests run one at a time; each
/// sets the plan it needs and clears it at the end.
@Suite("Recovery from token faults", .serialized)
struct RecoveryTests {
    let faults = FaultModule.shared

    init() { faults.clearPlan() }

    @Test("an empty plan passes every call through and logs it")
    func passThrough() throws {
        let service = try makeFaultService()
        let mark = faults.logMark()
        let seed = SecureRandom.bytes(32)
        let (ciphertext, key) = try service.encrypt(seed)
        #expect(try service.decrypt(ciphertext, expectedKeyID: key.keyID).plaintext == seed)
        let calls = faults.calls(since: mark)
        #expect(calls.contains { $0.function == "C_Encrypt" && $0.rv == 0 })
        #expect(calls.contains { $0.function == "C_Decrypt" && $0.rv == 0 })
        #expect(calls.allSatisfy { $0.rv == 0 })
    }

    @Test("a one-shot fault on C_Encrypt or C_Decrypt is ridden through",
          arguments: ["CKR_SESSION_HANDLE_INVALID", "CKR_USER_NOT_LOGGED_IN", "CKR_DEVICE_REMOVED"],
          ["C_Encrypt", "C_Decrypt"])
    func oneShotRideThrough(rv: String, function: String) throws {
        defer { faults.clearPlan() }
        let service = try makeFaultService()
        let seed = SecureRandom.bytes(32)
        let (ciphertext, key) = try service.encrypt(seed)
        let generation = try PKCS11Module.load(path: faults.modulePath).initialization
        let mark = faults.logMark()
        faults.setPlan("fail \(function) \(rv) 1")
        if function == "C_Encrypt" {
            let (again, _) = try service.encrypt(seed)
            #expect(try service.decrypt(again, expectedKeyID: key.keyID).plaintext == seed)
        } else {
            #expect(try service.decrypt(ciphertext, expectedKeyID: key.keyID).plaintext == seed)
        }
        let calls = faults.calls(since: mark).filter { $0.function == function }
        #expect(calls.count == 2 && calls.first?.rv != 0 && calls.last?.rv == 0, "\(calls)")
        let module = try PKCS11Module.load(path: faults.modulePath)
        if rv == "CKR_DEVICE_REMOVED" {
            #expect(module.initialization > generation, "a lost device is recovered by re-initialising the module")
        } else {
            #expect(module.initialization == generation, "a lost session or login does not re-initialise the module")
        }
        // And the service keeps working.
        #expect(try service.decrypt(service.encrypt(seed).ciphertext, expectedKeyID: key.keyID).plaintext == seed)
    }

    @Test("a lost login with several pooled sessions is ridden through", arguments: ["C_Encrypt", "C_Decrypt"])
    func lostLoginWithPool(function: String) throws {
        defer { faults.clearPlan() }
        let service = try makeFaultService(maxSessions: 4)
        let seed = SecureRandom.bytes(32)
        let (_, key) = try service.encrypt(seed)
        // Hold three sessions at once so that the pool keeps them.
        try service.token.withSession { (_) throws(PKCS11Error) in
            try service.token.withSession { (_) throws(PKCS11Error) in
                try service.token.withSession { (_) throws(PKCS11Error) in }
            }
        }
        #expect(service.token.openSessions == 3)
        // The token logs out (all sessions); every pooled session is now unauthenticated.
        faults.setPlan("fail \(function) CKR_USER_NOT_LOGGED_IN 1")
        for _ in 0..<6 {
            let (again, _) = try service.encrypt(seed)
            #expect(try service.decrypt(again, expectedKeyID: key.keyID).plaintext == seed)
        }
    }

    @Test("a one-shot CKR_GENERAL_ERROR on C_Encrypt fails unavailable and the next call succeeds")
    func generalErrorOnEncrypt() throws {
        defer { faults.clearPlan() }
        let service = try makeFaultService()
        let seed = SecureRandom.bytes(32)
        faults.setPlan("fail C_Encrypt CKR_GENERAL_ERROR 1")
        do {
            _ = try service.encrypt(seed)
            Issue.record("encrypt succeeded through a failing C_Encrypt")
        } catch {
            #expect(error.code == .unavailable, "\(error)")
        }
        let (ciphertext, key) = try service.encrypt(seed)
        #expect(try service.decrypt(ciphertext, expectedKeyID: key.keyID).plaintext == seed)
    }

    @Test("a session left with an active operation by a failed call is replaced, not reused forever",
          arguments: ["C_Encrypt", "C_Decrypt"])
    func operationLeftActive(function: String) throws {
        defer { faults.clearPlan() }
        let service = try makeFaultService(maxSessions: 1)
        let seed = SecureRandom.bytes(32)
        let (ciphertext, key) = try service.encrypt(seed)
        faults.setPlan("fail \(function) CKR_FUNCTION_CANCELED 1 leave-active")
        if function == "C_Encrypt" {
            #expect(throws: KMSError.self) { _ = try service.encrypt(seed) }
        } else {
            #expect(throws: KMSError.self) { _ = try service.decrypt(ciphertext, expectedKeyID: key.keyID) }
        }
        faults.clearPlan()
        for _ in 0..<3 {
            #expect(try service.decrypt(service.encrypt(seed).ciphertext, expectedKeyID: key.keyID).plaintext == seed)
        }
    }

    @Test("a one-shot CKR_GENERAL_ERROR on C_Decrypt of a valid ciphertext is not reported as forged")
    func generalErrorOnDecrypt() throws {
        defer { faults.clearPlan() }
        let service = try makeFaultService()
        let seed = SecureRandom.bytes(32)
        let (ciphertext, key) = try service.encrypt(seed)
        faults.setPlan("fail C_Decrypt CKR_GENERAL_ERROR 1")
        do {
            #expect(try service.decrypt(ciphertext, expectedKeyID: key.keyID).plaintext == seed)
        } catch {
            #expect(error.code == .unavailable, "a valid ciphertext must never be called invalid: \(error)")
        }
        #expect(try service.decrypt(ciphertext, expectedKeyID: key.keyID).plaintext == seed)
        // A forged ciphertext is still invalid.
        var forged = ciphertext
        forged[forged.count - 1] ^= 1
        #expect(throws: KMSError.invalid("ciphertext failed authentication")) {
            _ = try service.decrypt(forged, expectedKeyID: key.keyID)
        }
    }

    @Test("CKR_GENERAL_ERROR on every C_Decrypt is unavailable (the canary fails too), never invalid")
    func generalErrorOnEveryDecrypt() throws {
        defer { faults.clearPlan() }
        let service = try makeFaultService()
        let seed = SecureRandom.bytes(32)
        let (ciphertext, key) = try service.encrypt(seed)
        faults.setPlan("fail C_Decrypt CKR_GENERAL_ERROR")
        for _ in 0..<3 {
            do {
                let opened = try service.decrypt(ciphertext, expectedKeyID: key.keyID)
                Issue.record("decrypt succeeded through a failing C_Decrypt: \(opened.plaintext == seed)")
            } catch {
                #expect(error.code == .unavailable, "\(error)")
            }
        }
        faults.clearPlan()
        #expect(try service.decrypt(ciphertext, expectedKeyID: key.keyID).plaintext == seed)
    }

    @Test("a persistent device loss fails unavailable, then recovers by itself once the device is back")
    func persistentDeviceLoss() throws {
        defer { faults.clearPlan() }
        let service = try makeFaultService(reconnectInterval: .milliseconds(200))
        let seed = SecureRandom.bytes(32)
        let (ciphertext, key) = try service.encrypt(seed)
        faults.setPlan("fail * CKR_DEVICE_REMOVED")
        for _ in 0..<5 {
            do {
                _ = try service.encrypt(seed)
                Issue.record("encrypt succeeded with the device gone")
            } catch {
                #expect(error.code == .unavailable, "\(error)")
            }
            do {
                let opened = try service.decrypt(ciphertext, expectedKeyID: key.keyID)
                Issue.record("decrypt succeeded with the device gone: \(opened.plaintext == seed)")
            } catch {
                #expect(error.code == .unavailable, "\(error)")
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        faults.clearPlan()
        let start = ContinuousClock.now
        let opened = try eventually(within: .seconds(5)) { try service.decrypt(ciphertext, expectedKeyID: key.keyID) }
        #expect(opened.plaintext == seed)
        #expect(ContinuousClock.now - start < .seconds(3))
        #expect(try service.decrypt(service.encrypt(seed).ciphertext, expectedKeyID: key.keyID).plaintext == seed)
    }

    /// SoftHSM itself, no injected faults: the token's folder is moved away and back. Only that token's folder, so
    /// the suites using the same token directory in parallel are not affected. (Moving the whole token directory
    /// gives the same return codes: C_GetTokenInfo CKR_GENERAL_ERROR, no objects found, stale handles invalid.)
    @Test("a real storage outage fails unavailable, keeps the keys, and recovers once the storage is back")
    func realOutage() throws {
        let fixture = SoftHSMFixture.shared
        let label = fixture.takeToken()
        let service = try makeFaultService(reconnectInterval: .milliseconds(200), label: label)
        let seed = SecureRandom.bytes(32)
        let (ciphertext, key) = try service.encrypt(seed)
        let folder = try #require(fixture.tokenFolder(label: label))
        let away = fixture.root.appendingPathComponent("away-\(folder.lastPathComponent)")
        try FileManager.default.moveItem(at: folder, to: away)
        var moved = true
        defer { if moved { try? FileManager.default.moveItem(at: away, to: folder) } }

        // First a refresh (as the health probe does), before anything re-initialised the module: SoftHSM still lists
        // the token but finds no objects in it. The keys must not be forgotten.
        #expect(throws: PKCS11Error.self) { try service.keyRing.refresh() }
        #expect(service.keyRing.current?.id == key.id)
        for _ in 0..<4 {
            do {
                _ = try service.encrypt(seed)
                Issue.record("encrypt succeeded with the token's storage gone")
            } catch {
                #expect(error.code == .unavailable, "\(error)")
            }
            do {
                let opened = try service.decrypt(ciphertext, expectedKeyID: key.keyID)
                Issue.record("decrypt succeeded with the token's storage gone: \(opened.plaintext == seed)")
            } catch {
                #expect(error.code == .unavailable, "\(error)")
            }
            #expect(throws: PKCS11Error.self) { try service.keyRing.refresh() }
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(service.keyRing.current?.id == key.id, "the known keys are kept through the outage")

        try FileManager.default.moveItem(at: away, to: folder)
        moved = false
        let opened = try eventually(within: .seconds(5)) { try service.decrypt(ciphertext, expectedKeyID: key.keyID) }
        #expect(opened.plaintext == seed)
        #expect(try service.decrypt(service.encrypt(seed).ciphertext, expectedKeyID: key.keyID).plaintext == seed)
        try service.keyRing.refresh()
        #expect(service.keyRing.current?.id == key.id)
    }

    @Test("latency slows calls down but does not break them")
    func latency() throws {
        defer { faults.clearPlan() }
        let service = try makeFaultService()
        let seed = SecureRandom.bytes(32)
        faults.setPlan("delay C_Encrypt 200")
        let start = ContinuousClock.now
        let (ciphertext, key) = try service.encrypt(seed)
        #expect(ContinuousClock.now - start >= .milliseconds(200))
        faults.clearPlan()
        #expect(try service.decrypt(ciphertext, expectedKeyID: key.keyID).plaintext == seed)
    }

    @Test("a wrong PIN is sent to the token exactly once")
    func wrongPINOnce() throws {
        let label = SoftHSMFixture.shared.takeToken()
        let token = Token(configuration: TokenConfiguration(
            modulePath: faults.modulePath, tokenLabel: label, pin: Array("wrong-pin".utf8)))
        let mark = faults.logMark()
        for _ in 0..<3 {
            #expect(throws: PKCS11Error.self) { try token.connect() }
        }
        let logins = faults.calls(since: mark).filter { $0.function == "C_Login" }
        #expect(logins.count == 1, "\(logins)")
        #expect(logins.first?.rv == UInt(CKR_PIN_INCORRECT))
    }
}

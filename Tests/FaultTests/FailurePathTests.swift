import Dispatch
import Foundation
import KeyService
import PKCS11
import Testing
import TestSupport

/// Failure paths cost the token no more than success paths, and no call waits for a session past its deadline.
/// Part of the serialized recovery suite: the fault plan and call log are process-wide.
extension RecoveryTests {
    @Test("a forged ciphertext costs at most two token operations; the canary runs at most once a second")
    func forgedCiphertextCost() throws {
        let service = try makeFaultService()
        let seed = SecureRandom.bytes(32)
        let (ciphertext, key) = try service.encrypt(seed)
        var forged = ciphertext
        forged[forged.count - 1] ^= 0x01

        let mark = faults.logMark()
        #expect(throws: KMSError.invalid("ciphertext failed authentication")) {
            _ = try service.decrypt(forged, expectedKeyID: key.keyID)
        }
        let first = faults.calls(since: mark)
        // Two decryptions of the request, plus at most one canary round trip (one C_Encrypt, one C_Decrypt).
        let firstCanaries = first.filter { $0.function == "C_Encrypt" }.count
        #expect(firstCanaries <= 1, "one canary at most: \(first.map(\.function))")
        #expect(first.filter { $0.function == "C_Decrypt" }.count <= 2 + firstCanaries, "\(first.map(\.function))")

        // A flood: each forged ciphertext still costs at most two decryptions, and the canary is not run per request.
        let started = ContinuousClock.now
        for _ in 0..<50 {
            #expect(throws: KMSError.self) { _ = try service.decrypt(forged, expectedKeyID: key.keyID) }
        }
        let elapsed = ContinuousClock.now - started
        let flood = faults.calls(since: mark)
        let canaries = flood.filter { $0.function == "C_Encrypt" }.count
        #expect(flood.filter { $0.function == "C_Decrypt" }.count <= 2 * 51 + canaries)
        #expect(canaries <= Int(elapsed.components.seconds) + 2, "\(canaries) canaries in \(elapsed)")
        // The real ciphertext still opens.
        #expect(try service.decrypt(ciphertext, expectedKeyID: key.keyID).plaintext == seed)
    }

    @Test("a call that cannot get a session before its deadline fails with deadlineExceeded and never reaches the token")
    func sessionWaitHasADeadline() throws {
        defer { faults.clearPlan() }
        let service = try makeFaultService(maxSessions: 1)
        let seed = SecureRandom.bytes(32)
        _ = try service.encrypt(seed)
        faults.setPlan("delay C_Encrypt 1500")
        let mark = faults.logMark()
        let slowDone = DispatchSemaphore(value: 0)
        Thread {
            _ = try? service.encrypt(seed)
            slowDone.signal()
        }.start()
        // Wait until the slow call holds the only session.
        #expect(try eventually(within: .seconds(5)) { () throws -> Bool in
            guard faults.calls(since: mark).contains(where: { $0.function == "C_EncryptInit" }) else { throw KMSError.invalid("not yet") }
            return true
        })
        let asked = ContinuousClock.now
        #expect(throws: KMSError.self) { _ = try service.encrypt(seed, deadline: .now + .milliseconds(200)) }
        let waited = ContinuousClock.now - asked
        #expect(waited < .seconds(1), "gave up at its deadline, not when the session came back: \(waited)")
        do {
            _ = try service.encrypt(seed, deadline: .now + .milliseconds(100))
        } catch {
            #expect(error.code == .deadlineExceeded)
        }
        #expect(slowDone.wait(timeout: .now() + 10) == .success)
        #expect(faults.calls(since: mark).filter { $0.function == "C_EncryptInit" }.count == 1,
                "the calls that timed out never reached the token")
    }
}

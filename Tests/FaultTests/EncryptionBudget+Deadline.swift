import Foundation
import KeyService
import PKCS11
import Synchronization
import Testing
import TestSupport

/// The encryption budget on a slow token (the fault module delays `C_CreateObject`, the reservation write). Part of
/// the serialized recovery suite: the fault plan is process-wide.
extension RecoveryTests {
    @Test("an Encrypt waiting for the budget reservation another caller is writing ends at its deadline; the write lands")
    func budgetWaitEndsAtDeadline() throws {
        defer { faults.clearPlan() }
        let token = try makeRulesToken()
        let ring = KeyRing(token: token)
        let key = try ring.initialize().key
        // Blocks of 1: every Encrypt needs a reservation written first.
        let budget = EncryptionBudget(token: token, budget: 256)
        try budget.consume(key.id)
        let before = try #require(EncryptionBudget.readAll(token)[key.keyID])

        faults.setPlan("delay C_CreateObject 1500")
        let writer = Mutex<KMSError??>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            do throws(KMSError) {
                try budget.consume(key.id)
                writer.withLock { $0 = .some(nil) }
            } catch {
                writer.withLock { $0 = .some(error) }
            }
            done.signal()
        }
        Thread.sleep(forTimeInterval: 0.3) // the writer is inside C_CreateObject now
        let started = ContinuousClock.now
        do {
            try budget.consume(key.id, deadline: .now + .milliseconds(300))
            Issue.record("a caller without a reservation was counted while the write was in flight")
        } catch {
            #expect(error.code == .deadlineExceeded && error.message.contains("reservation"), "\(error)")
        }
        #expect(ContinuousClock.now - started < .milliseconds(1000), "the wait ended at the deadline, not after the write")
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(writer.withLock { $0 } == .some(nil), "the writer's Encrypt is counted")
        faults.clearPlan()
        #expect(try EncryptionBudget.readAll(token)[key.keyID] == before + 1)
    }
}

import Foundation
import Synchronization
import KeyService
import PKCS11
import Testing
import TestSupport

/// The encryption budget under many callers at once, on a real token: reservations are written ahead of need by one
/// caller at a time, the token's count is never below the number of Encrypts and at most a block above it, and
/// exactly the budget is granted.
@Suite("Encryption budget under concurrency")
struct EncryptionBudgetConcurrencyTests {
    /// Runs `perThread` calls of `body` on each of `threads` threads and returns how many succeeded and failed.
    private func hammer(threads: Int, perThread: Int, _ body: @escaping @Sendable () throws(KMSError) -> Void) -> (ok: Int, failed: [KMSError]) {
        let results = Results()
        let group = DispatchGroup()
        for _ in 0..<threads {
            group.enter()
            Thread.detachNewThread {
                for _ in 0..<perThread {
                    do throws(KMSError) { try body(); results.add(nil) } catch { results.add(error) }
                }
                group.leave()
            }
        }
        group.wait()
        return results.snapshot
    }

    @Test("8 threads: every Encrypt counted, the token's reservation covers them and is at most one block ahead")
    func reservationsAhead() throws {
        let ring = KeyRing(token: try makeToken("budget-ahead"))
        let key = try ring.initialize().key
        let reservations = Results()
        let budget = EncryptionBudget(token: ring.token, budget: 5120, onReserve: { _, _ in reservations.add(nil) })
        #expect(budget.block == 20)
        let start = try EncryptionBudget.readAll(ring.token)[key.keyID] ?? 0 // KeyRing.initialize counts nothing by itself
        let (ok, failed) = hammer(threads: 8, perThread: 50) { () throws(KMSError) in try budget.consume(key.id) }
        #expect(ok == 400 && failed.isEmpty, "\(failed)")
        let stored = try #require(EncryptionBudget.readAll(ring.token)[key.keyID])
        #expect(stored >= start + 400 && stored <= start + 400 + 20, "\(start) -> \(stored)")
        // Written ahead once at most half a block is left, to `used + block`: one write per half block at most (a
        // write per Encrypt would be 400), never fewer than one per block.
        #expect(reservations.snapshot.ok >= 20 && reservations.snapshot.ok <= 42, "\(reservations.snapshot.ok)")
        // A restarted process counts the reservation as used.
        let again = EncryptionBudget(token: ring.token, budget: 5120)
        try again.consume(key.id)
        #expect(again.usedFraction(key.id) == Double(stored + 1) / 5120)
    }

    @Test("exactly the budget is granted to racing callers; the rest are refused naming 'p11kms rotate'")
    func exactlyTheBudget() throws {
        let ring = KeyRing(token: try makeToken("budget-exact"))
        let key = try ring.initialize().key
        let budget = EncryptionBudget(token: ring.token, budget: 600)
        #expect(budget.block == 2)
        let used = try EncryptionBudget.readAll(ring.token)[key.keyID] ?? 0
        let (ok, failed) = hammer(threads: 8, perThread: 80) { () throws(KMSError) in try budget.consume(key.id) }
        #expect(ok == 600 - Int(used))
        #expect(failed.count == 640 - ok)
        #expect(failed.allSatisfy { $0.code == .failedPrecondition && $0.message.contains("p11kms rotate") })
        #expect(try EncryptionBudget.readAll(ring.token)[key.keyID] == 600)
    }
}

/// Counts successes and keeps failures from several threads.
final class Results: Sendable {
    private let state = Mutex<(ok: Int, failed: [KMSError])>((0, []))
    func add(_ error: KMSError?) {
        state.withLock { if let error { $0.failed.append(error) } else { $0.ok += 1 } }
    }
    var snapshot: (ok: Int, failed: [KMSError]) { state.withLock { $0 } }
}

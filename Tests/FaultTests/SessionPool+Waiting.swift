import Dispatch
import Foundation
import PKCS11
import Synchronization
import Testing
import TestSupport

/// A value written on one thread and read on another, for the threads these tests start.
final class Shared<Value: Sendable>: Sendable {
    private let value: Mutex<Value>
    init(_ value: Value) { self.value = Mutex(value) }
    func set(_ body: (inout Value) -> Void) { value.withLock { body(&$0) } }
    var get: Value { value.withLock { $0 } }
}

/// The session pool of a `Token`: waiting for a free session, the count across a re-initialisation, and the
/// module's lifetime lock. Part of the serialized recovery suite: the fault plan and call log are process-wide.
extension RecoveryTests {
    @Test("a caller waiting for the only session gets it when it comes back, without opening another")
    func waiterGetsReturnedSession() throws {
        let token = try makeRulesToken(maxSessions: 1)
        let entered = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        Thread {
            try? token.withSession { (_) throws(PKCS11Error) in
                entered.signal()
                Thread.sleep(forTimeInterval: 0.3)
            }
            done.signal()
        }.start()
        #expect(entered.wait(timeout: .now() + 10) == .success)
        #expect(token.sessionsInUse == 1)
        let mark = faults.logMark()
        let asked = ContinuousClock.now
        let bytes = try token.withSession(deadline: .now + .seconds(20)) { (session) throws(PKCS11Error) in
            try session.generateRandom(count: 8)
        }
        let waited = ContinuousClock.now - asked
        #expect(bytes.count == 8)
        #expect(waited < .seconds(10), "woken when the session came back, not at its deadline: \(waited)")
        #expect(!faults.calls(since: mark).contains { $0.function == "C_OpenSession" })
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(token.openSessions == 1 && token.sessionsInUse == 0)
    }

    @Test("many threads share few sessions: every call gets one, never more than the limit open or lent")
    func manyWaiters() throws {
        let token = try makeRulesToken(maxSessions: 2)
        let threads = 8, calls = 25
        let failures = Shared(0)
        let peak = Shared(0)
        let finished = DispatchSemaphore(value: 0)
        for _ in 0..<threads {
            Thread {
                for _ in 0..<calls {
                    do {
                        try token.withSession(deadline: .now + .seconds(30)) { (session) throws(PKCS11Error) in
                            let inUse = token.sessionsInUse
                            peak.set { $0 = max($0, inUse) }
                            _ = try session.generateRandom(count: 8)
                            Thread.sleep(forTimeInterval: 0.002)
                        }
                    } catch {
                        failures.set { $0 += 1 }
                    }
                }
                finished.signal()
            }.start()
        }
        for _ in 0..<threads { #expect(finished.wait(timeout: .now() + 60) == .success) }
        #expect(failures.get == 0)
        #expect(peak.get >= 1 && peak.get <= 2, "\(peak.get) sessions lent at once")
        #expect(token.openSessions <= 2 && token.sessionsInUse == 0)
    }

    @Test("after a re-initialisation the pool forgets the older sessions and counts from zero")
    func countStartsOverAfterReinitialisation() throws {
        defer { faults.clearPlan() }
        let token = try makeRulesToken(maxSessions: 2)
        try holdSessions(token, 2)
        #expect(token.openSessions == 2)
        let generation = token.handleEpoch.initialization
        faults.setPlan("fail C_GenerateRandom CKR_DEVICE_REMOVED 1")
        let bytes = try token.withSession { (session) throws(PKCS11Error) in try session.generateRandom(count: 8) }
        #expect(bytes.count == 8)
        #expect(token.handleEpoch.initialization > generation)
        #expect(token.openSessions == 1, "only the session opened after the re-initialisation")
        // Both places are usable again at once: none is held by a session of the older initialization.
        let mark = faults.logMark()
        try holdSessions(token, 2) { () throws(PKCS11Error) in
            #expect(token.sessionsInUse == 2)
        }
        #expect(faults.calls(since: mark).filter { $0.function == "C_OpenSession" }.count == 1)
        #expect(token.openSessions == 2)
    }

    @Test("a re-initialisation waits for the calls in flight, and a call nested in one is not blocked by it")
    func reinitialisationWaitsForCalls() throws {
        let token = try makeRulesToken()
        let module = try PKCS11Module.load(path: faults.modulePath)
        let generation = module.initialization
        let entered = DispatchSemaphore(value: 0)
        let outerDone = DispatchSemaphore(value: 0)
        let reinitialised = DispatchSemaphore(value: 0)
        let bodyEnded = Shared<ContinuousClock.Instant?>(nil)
        let reinitialisationEnded = Shared<ContinuousClock.Instant?>(nil)
        let nestedFailure = Shared<String?>(nil)
        Thread {
            do {
                try token.withSession { (_) throws(PKCS11Error) in
                    entered.signal()
                    // Time for the re-initialisation below to start waiting for this call.
                    Thread.sleep(forTimeInterval: 0.3)
                    _ = try token.withSession { (session) throws(PKCS11Error) in try session.generateRandom(count: 8) }
                    bodyEnded.set { $0 = .now }
                }
            } catch {
                nestedFailure.set { $0 = "\(error)" }
            }
            outerDone.signal()
        }.start()
        #expect(entered.wait(timeout: .now() + 10) == .success)
        Thread {
            try? module.reinitialize(ifInitialization: generation)
            reinitialisationEnded.set { $0 = .now }
            reinitialised.signal()
        }.start()
        #expect(outerDone.wait(timeout: .now() + 20) == .success, "the nested call ran while the re-initialisation waited")
        #expect(reinitialised.wait(timeout: .now() + 20) == .success)
        #expect(nestedFailure.get == nil)
        let ended = try #require(bodyEnded.get)
        let reinitialisedAt = try #require(reinitialisationEnded.get)
        #expect(ended < reinitialisedAt, "the module was re-initialised only after the call in flight ended")
        #expect(module.initialization == generation + 1)
        // The token follows: the old sessions are forgotten, a new one is opened.
        #expect(try token.withSession { (session) throws(PKCS11Error) in try session.generateRandom(count: 8) }.count == 8)
        #expect(token.openSessions == 1 && token.handleEpoch.initialization == generation + 1)
    }
}

import CPKCS11
import Foundation
import PKCS11
import Testing
import TestSupport

/// One SoftHSM token for the token-level recovery and pool tests: they run one at a time (serialized suite) and each
/// uses a `Token` of its own on it, so they need no fresh token each (the in-process token pool is finite).
let tokenRulesLabel = SoftHSMFixture.shared.takeToken()

/// A `Token` of its own on `tokenRulesLabel`, through the fault-injecting module, connected.
func makeRulesToken(maxSessions: Int = 4, reconnectInterval: Duration = .milliseconds(100)) throws -> Token {
    let token = Token(configuration: TokenConfiguration(
        modulePath: FaultModule.shared.modulePath, tokenLabel: tokenRulesLabel, pin: Array(SoftHSMFixture.userPIN.utf8),
        maxSessions: maxSessions, reconnectInterval: reconnectInterval))
    try token.connect()
    return token
}

/// Holds `count` sessions of `token` at once (nested calls), so that the pool keeps that many open.
func holdSessions(_ token: Token, _ count: Int, then body: () throws(PKCS11Error) -> Void = {}) throws(PKCS11Error) {
    guard count > 0 else { return try body() }
    try token.withSession { (_) throws(PKCS11Error) in try holdSessions(token, count - 1, then: body) }
}

/// The rules of `TokenRecovery`, as `Token.withSession` follows them, counted in the fault module's call log. Part
/// of the serialized recovery suite: the fault plan and call log are process-wide.
extension RecoveryTests {
    private func random(_ token: Token) throws(PKCS11Error) -> [UInt8] {
        try token.withSession { (session) throws(PKCS11Error) -> [UInt8] in try session.generateRandom(count: 16) }
    }

    private func count(_ function: String, since mark: Int) -> Int {
        faults.calls(since: mark).filter { $0.function == function }.count
    }

    @Test("a lost session is dropped and the call tried exactly once more; the module is not re-initialised")
    func lostSessionOneRetry() throws {
        defer { faults.clearPlan() }
        let token = try makeRulesToken()
        let module = try PKCS11Module.load(path: faults.modulePath)
        let generation = module.initialization

        // Once: the second try succeeds, in another session; the first one is closed.
        var mark = faults.logMark()
        faults.setPlan("fail C_GenerateRandom CKR_SESSION_HANDLE_INVALID 1")
        #expect(try random(token).count == 16)
        #expect(count("C_GenerateRandom", since: mark) == 2)
        #expect(count("C_CloseSession", since: mark) == 1)

        // Every time: each call tries twice, then fails with the lost session; both sessions are dropped.
        mark = faults.logMark()
        faults.setPlan("fail C_GenerateRandom CKR_SESSION_HANDLE_INVALID")
        for _ in 0..<3 {
            do {
                _ = try random(token)
                Issue.record("a call succeeded through a failing C_GenerateRandom")
            } catch {
                #expect(error.isSessionLost, "\(error)")
            }
        }
        #expect(count("C_GenerateRandom", since: mark) == 6, "exactly one retry per call")
        #expect(count("C_CloseSession", since: mark) == 6)
        #expect(token.sessionsInUse == 0)
        #expect(module.initialization == generation, "a lost session does not re-initialise the module")

        faults.clearPlan()
        #expect(try random(token).count == 16)
    }

    @Test("a lost login with pooled sessions costs exactly one C_Login; the handle epoch moves once")
    func lostLoginOneLogin() throws {
        defer { faults.clearPlan() }
        let token = try makeRulesToken(maxSessions: 4)
        try holdSessions(token, 3)
        #expect(token.openSessions == 3)
        let before = token.handleEpoch
        let mark = faults.logMark()
        // The token really logs out (every session), and the call fails with CKR_USER_NOT_LOGGED_IN.
        faults.setPlan("fail C_GenerateRandom CKR_USER_NOT_LOGGED_IN 1")
        for _ in 0..<6 {
            #expect(try random(token).count == 16)
        }
        // Every pooled session is logged in again by that one login: use them all at once.
        try holdSessions(token, 3) { () throws(PKCS11Error) in _ = try random(token) }
        let logins = faults.calls(since: mark).filter { $0.function == "C_Login" }
        #expect(logins.count == 1 && logins.first?.rv == 0, "\(logins)")
        let after = token.handleEpoch
        #expect(after.logins == before.logins + 1, "handles found before the logout are not trusted after it")
        #expect(after.initialization == before.initialization)
    }

    @Test("a lost device re-initialises the module at most once per reconnect interval")
    func lostDeviceRateLimited() throws {
        defer { faults.clearPlan() }
        let interval = Duration.seconds(2)
        let token = try makeRulesToken(reconnectInterval: interval)
        let module = try PKCS11Module.load(path: faults.modulePath)
        let generation = module.initialization
        let mark = faults.logMark()
        let started = ContinuousClock.now
        // The device goes away at the first C_GenerateRandom and stays away until a C_Initialize.
        faults.setPlan("fail C_GenerateRandom CKR_DEVICE_REMOVED")
        for _ in 0..<4 {
            do {
                _ = try random(token)
                Issue.record("a call succeeded with the device gone")
            } catch {
                #expect(error.isDeviceLost && error.isUnavailable, "\(error)")
            }
        }
        let elapsed = ContinuousClock.now - started
        #expect(count("C_Initialize", since: mark) == 1 || elapsed >= interval,
                "one re-initialisation within the interval, not one per call")
        #expect(count("C_Finalize", since: mark) == count("C_Initialize", since: mark))
        #expect(token.handleEpoch.initialization == module.initialization && module.initialization > generation)

        // Once the interval has passed, the next call re-initialises again, and with the device back it succeeds.
        faults.clearPlan()
        Thread.sleep(forTimeInterval: 2.2)
        let before = module.initialization
        #expect(try random(token).count == 16)
        #expect(module.initialization == before + 1)
        #expect(token.sessionsInUse == 0 && token.openSessions == 1)
    }
}

import Synchronization

/// The recovery rules of a token, in one place; `Token.withSession` follows them.
///
/// - A call that fails because its session, login or device is lost is tried once more, and only once
///   (`run(_:)`); any other failure is the caller's.
/// - The session of such a call is dropped; a session whose call failed otherwise goes back to the pool
///   (`keepsSession(after:)`).
/// - The second try checks each pooled session before using it (`checkedSession(take:drop:putBack:)`): a dead one is
///   dropped and the next taken, and one that lost its login is logged in again. A lost login affects every session
///   of the token, so the one `C_Login` it takes serves them all.
/// - `C_Login` runs exactly once per need; a rejected PIN is remembered and never sent again (`logIn(_:)`,
///   `refuseIfPINRejected()`).
/// - A lost device re-initialises the module at most once per `reconnectInterval`; calls in between fail as
///   unavailable (`reinitializeIfDue(_:after:)`).
final class TokenRecovery: Sendable {
    private let pin: [UInt8]
    private let reconnectInterval: Duration
    /// Pooled sessions a checked take may find dead before a fresh one must work.
    private let maxSessions: Int
    /// Read by every call, so atomics: set once, never cleared.
    private let pinRejected = Atomic<Bool>(false)
    /// Read by every handle lookup, so an atomic: only ever incremented.
    private let loginCount = Atomic<UInt64>(0)
    /// Read and written only after a lost device.
    private let lastReinitialization = Mutex<ContinuousClock.Instant?>(nil)

    init(configuration: TokenConfiguration) {
        pin = configuration.pin
        reconnectInterval = configuration.reconnectInterval
        maxSessions = configuration.maxSessions
    }

    /// Successful logins so far (part of the handle epoch: a token that had to log in again may renumber objects).
    var logins: UInt64 { loginCount.load(ordering: .acquiring) }

    // MARK: Which failures are recovered

    /// The failure is recovered by a new session (lost session or login, stale handle, an operation left active)
    /// or by re-initialising the module (lost device).
    static func isRecoverable(_ error: PKCS11Error?) -> Bool {
        guard let error else { return false }
        return error.isSessionLost || error.isDeviceLost
    }

    /// Whether a session whose call failed with `error` may be lent again.
    static func keepsSession(after error: PKCS11Error?) -> Bool { !isRecoverable(error) }

    /// Runs `attempt` once without checks and, when it fails recoverably, once more with checked sessions.
    func run<T, E: TokenCallError>(_ attempt: (_ checked: Bool) throws(E) -> T) throws(E) -> T {
        do throws(E) {
            return try attempt(false)
        } catch {
            guard TokenRecovery.isRecoverable(error.tokenError) else { throw error }
            return try attempt(true)
        }
    }

    // MARK: Sessions and logins

    /// Takes a session for the second try: each pooled session is asked whether it is still logged in; a dead one
    /// is dropped and the next taken (bounded: every pooled session may be dead, and then a fresh one must work),
    /// one that lost its login is logged in again.
    func checkedSession(take: () throws(PKCS11Error) -> Session, drop: (Session) -> Void,
                        putBack: (Session) -> Void) throws(PKCS11Error) -> Session {
        var tries = 0
        while true {
            let session = try take()
            tries += 1
            do throws(PKCS11Error) {
                if try !session.isLoggedIn() { try logIn(session) }
                return session
            } catch {
                if error.isSessionLost && tries <= maxSessions {
                    drop(session)
                    continue
                }
                if TokenRecovery.keepsSession(after: error) { putBack(session) } else { drop(session) }
                throw error
            }
        }
    }

    /// Fails with `pinRejected` once the token has rejected the PIN: it is never sent again.
    func refuseIfPINRejected() throws(PKCS11Error) {
        if pinRejected.load(ordering: .acquiring) { throw PKCS11Error(.pinRejected) }
    }

    /// Exactly one `C_Login`; a rejected PIN is remembered.
    func logIn(_ session: Session) throws(PKCS11Error) {
        do throws(PKCS11Error) {
            try session.login(pin: pin)
            loginCount.add(1, ordering: .acquiringAndReleasing)
        } catch {
            if case .pinRejected = error.kind { pinRejected.store(true, ordering: .releasing) }
            throw error
        }
    }

    // MARK: Lost devices

    /// After a call failed with `error` on `module`: re-initialises the module when the device is lost and the last
    /// re-initialisation is at least `reconnectInterval` ago. Call without holding the module's lifetime lock.
    ///
    /// A failed re-initialisation leaves the module uninitialised: the next call fails with
    /// CKR_CRYPTOKI_NOT_INITIALIZED, counts as a lost device, and tries again (rate-limited as above).
    func reinitializeIfDue(_ module: PKCS11Module, after error: PKCS11Error?) {
        guard error?.isDeviceLost == true else { return }
        let seen = module.initialization
        let now = ContinuousClock.now
        let due = lastReinitialization.withLock { last -> Bool in
            if let last, now - last < reconnectInterval { return false }
            last = now
            return true
        }
        guard due else { return }
        try? module.reinitialize(ifInitialization: seen)
    }
}

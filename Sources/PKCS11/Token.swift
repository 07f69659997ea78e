import CPKCS11
import Synchronization

/// Where the token is and how to log in to it. The PIN is kept as bytes and never printed.
public struct TokenConfiguration: Sendable, CustomStringConvertible {
    public var modulePath: String
    public var tokenLabel: String
    public var pin: [UInt8]
    /// At most this many sessions are open at once; callers beyond it wait for a free one.
    public var maxSessions: Int
    /// A lost device is re-initialised at most this often; calls in between fail fast as unavailable.
    public var reconnectInterval: Duration
    /// The longest a call waits for a free session when it brings no deadline of its own.
    public var sessionWaitLimit: Duration = .seconds(10)

    public init(modulePath: String, tokenLabel: String, pin: [UInt8], maxSessions: Int = 8,
                reconnectInterval: Duration = .milliseconds(500)) {
        self.modulePath = modulePath
        self.tokenLabel = tokenLabel
        self.pin = pin
        self.maxSessions = max(1, maxSessions)
        self.reconnectInterval = reconnectInterval
    }

    public var description: String {
        "module=\(modulePath) token-label=\(tokenLabel) pin=<redacted> max-sessions=\(maxSessions)"
    }
}

/// One token: a pool of logged-in sessions, so that concurrent operations never share a session, and the recovery
/// rules of `TokenRecovery`: a lost session or login is reopened and the call retried once; a lost device
/// re-initialises the module and retries once; a rejected PIN is never tried again.
///
/// Plainly `Sendable`, with one `Mutex` of its own: the slot is in `state`, the module (loaded once, then never
/// changed) in a write-once reference; the sessions, and the waiting for a free one, in `pool` (`SessionPool`);
/// logins, the rejected PIN and the last re-initialisation in `recovery` (`TokenRecovery`). A `Session` taken from
/// the pool is lent to one caller at a time.
public final class Token: Sendable {
    public let configuration: TokenConfiguration
    /// Session-object copies of the keys in use (see `SessionKeyCopies`).
    public let sessionKeyCopies = SessionKeyCopies()
    /// Handles of the keys found in the token (see `keyHandle(id:name:in:)`).
    public let keyHandles = KeyHandleCache()

    private struct State {
        /// The token's slot, found by label, valid in the module initialisation it was found in.
        var slot: (id: CK_SLOT_ID, initialization: UInt64)?
    }

    private let state = Mutex(State())
    private let module = AtomicLazyReference<PKCS11Module>()
    private let pool: SessionPool
    private let recovery: TokenRecovery

    public init(configuration: TokenConfiguration) {
        self.configuration = configuration
        pool = SessionPool(capacity: configuration.maxSessions)
        recovery = TokenRecovery(configuration: configuration)
    }

    /// Loads the module, finds the token and logs in once. Fails fast with a clear error.
    public func connect() throws(PKCS11Error) {
        try withSession { (_) throws(PKCS11Error) in }
    }

    /// Sessions currently open (idle and in use).
    public var openSessions: Int { pool.openCount }

    /// Sessions currently lent out.
    public var sessionsInUse: Int { pool.inUse }

    /// Identifies when object handles found in this token may be reused: it changes when the module is
    /// re-initialised and whenever the token had to be logged in again (a token that lost its login may renumber its
    /// private objects; SoftHSM does). Read it inside `withSession`, before looking a handle up.
    public struct HandleEpoch: Hashable, Sendable {
        public let initialization: UInt64
        public let logins: UInt64
    }

    /// Two atomic reads, no lock. Inside `withSession` the initialization stays fixed while the body runs
    /// (re-initialisation waits for the call to end); the login count may grow when another call logs in again, which
    /// only makes the next lookup find a handle afresh.
    public var handleEpoch: HandleEpoch {
        HandleEpoch(initialization: pool.initialization, logins: recovery.logins)
    }

    /// Runs `body` with a session of its own, logged in. Retries once after a lost session, login or device; the
    /// retry checks a pooled session's login before using it, since a lost login affects every session
    /// (`TokenRecovery` holds these rules).
    ///
    /// Generic over the body's own typed error: any `TokenCallError` (a `PKCS11Error`, or a caller's error that
    /// carries the token error behind it), so callers throw their own errors from the body, and token failures of
    /// the session itself reach them as that type.
    ///
    /// Waiting for a free session ends at `deadline` (or after `sessionWaitLimit` without one) with
    /// `noFreeSession`: a call that cannot start in time is never sent to the token.
    public func withSession<T, E: TokenCallError>(deadline: ContinuousClock.Instant? = nil,
                                                  _ body: (Session) throws(E) -> T) throws(E) -> T {
        let waitUntil = deadline ?? .now.advanced(by: configuration.sessionWaitLimit)
        return try recovery.run { (checked) throws(E) -> T in
            try attempt(body, checked: checked, waitUntil: waitUntil)
        }
    }

    /// One try: a session (checked, for a retry), `body`, and the session back to the pool or dropped. A lost
    /// device is recovered after the module's lifetime lock is released (re-initialisation takes it exclusively).
    private func attempt<T, E: TokenCallError>(_ body: (Session) throws(E) -> T, checked: Bool,
                                               waitUntil: ContinuousClock.Instant) throws(E) -> T {
        let module: PKCS11Module
        do throws(PKCS11Error) { module = try loadedModule() } catch { throw E(tokenError: error) }
        do throws(E) {
            return try module.lifetime.withShared { () throws(E) -> T in
                let session: Session
                do throws(PKCS11Error) {
                    session = try acquire(module, checked: checked, waitUntil: waitUntil)
                } catch {
                    throw E(tokenError: error)
                }
                do throws(E) {
                    let value = try body(session)
                    pool.checkIn(session)
                    return value
                } catch {
                    if TokenRecovery.keepsSession(after: error.tokenError) { pool.checkIn(session) } else { discard(session) }
                    throw error
                }
            }
        } catch {
            recovery.reinitializeIfDue(module, after: error.tokenError)
            throw error
        }
    }

    /// Call inside `withSession` when an object known to exist is missing. Confirms that the session's token is
    /// still readable and still the configured one, and otherwise throws `tokenNotFound`, which counts as a lost
    /// device (the module is re-initialised and the call retried once). In a storage outage SoftHSM keeps the
    /// session and its login, answers C_FindObjects with nothing and cached handles with CKR_OBJECT_HANDLE_INVALID;
    /// only C_GetTokenInfo fails.
    public func confirmPresent(_ session: Session) throws(PKCS11Error) {
        let slot: CK_SLOT_ID
        do throws(PKCS11Error) {
            slot = try session.slotID()
        } catch {
            if error.isSessionLost || error.isDeviceLost { throw error }
            throw PKCS11Error(.tokenNotFound(label: configuration.tokenLabel))
        }
        guard (try? session.module.tokenLabel(slot: slot)) == configuration.tokenLabel else {
            throw PKCS11Error(.tokenNotFound(label: configuration.tokenLabel))
        }
    }

    private func loadedModule() throws(PKCS11Error) -> PKCS11Module {
        if let loaded = module.load() { return loaded }
        return module.storeIfNil(try PKCS11Module.load(path: configuration.modulePath))
    }

    /// A session for one try, called with the module's lifetime lock held shared: for a retry, a checked one.
    private func acquire(_ module: PKCS11Module, checked: Bool, waitUntil: ContinuousClock.Instant) throws(PKCS11Error) -> Session {
        guard checked else { return try take(module, waitUntil: waitUntil) }
        return try recovery.checkedSession(take: { () throws(PKCS11Error) -> Session in try take(module, waitUntil: waitUntil) },
                                           drop: discard, putBack: pool.checkIn)
    }

    /// An idle session of the current module initialisation, or a new one (logged in when the token needs it).
    private func take(_ module: PKCS11Module, waitUntil: ContinuousClock.Instant) throws(PKCS11Error) -> Session {
        try recovery.refuseIfPINRejected()
        let initialization = module.initialization
        if case .idle(let session) = try pool.checkOut(initialization: initialization, until: waitUntil) { return session }
        do throws(PKCS11Error) {
            return try openLoggedInSession(module, initialization: initialization)
        } catch {
            pool.cancelOpening(initialization: initialization)
            throw error
        }
    }

    private func openLoggedInSession(_ module: PKCS11Module, initialization: UInt64) throws(PKCS11Error) -> Session {
        let known = state.withLock { s in s.slot.flatMap { $0.initialization == initialization ? $0.id : nil } }
        let slotID: CK_SLOT_ID
        if let known { slotID = known } else { slotID = try module.slot(forTokenLabel: configuration.tokenLabel) }
        state.withLock { $0.slot = (slotID, initialization) }
        let session = try module.openSession(slot: slotID)
        do throws(PKCS11Error) {
            if try !session.isLoggedIn() { try recovery.logIn(session) }
        } catch {
            session.close()
            throw error
        }
        return session
    }

    /// Closes a session that failed in a way that makes it useless, and frees its place in the pool.
    private func discard(_ session: Session) {
        session.close()
        pool.remove(session)
    }
}

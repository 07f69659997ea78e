import CPKCS11
import Lifecycle
#if canImport(Glibc)
import Glibc
#endif

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
/// rules: a lost session or login is reopened and the call retried once; a lost device re-initialises the module
/// and retries once; a rejected PIN is never tried again.
// `@unchecked Sendable`, and why that is sound: every mutable stored property (`module`, `slot`,
// `sessionGeneration`, `idle`, `openCount`, `pinRejected`, `logins`, `lastReconnect`) is read and written only
// inside `lock.withLock` (Lifecycle's ConditionWait: a pthread mutex and condition, because callers wait for a free session, which
// `Mutex` cannot do); the other stored properties are `let` and Sendable. A `Session` taken from `idle` is lent to
// one caller at a time.
public final class Token: @unchecked Sendable {
    public let configuration: TokenConfiguration
    /// Session-object copies of the keys in use (see `SessionKeyCopies`).
    public let sessionKeyCopies = SessionKeyCopies()
    /// Handles of the keys found in the token (see `keyHandle(id:name:in:)`).
    public let keyHandles = KeyHandleCache()
    private let lock = ConditionWait()
    private var module: PKCS11Module?
    private var slot: CK_SLOT_ID?
    private var sessionGeneration: UInt64 = 0
    private var idle: [Session] = []
    private var openCount = 0
    private var pinRejected = false
    private var logins: UInt64 = 0
    private var lastReconnect: ContinuousClock.Instant?

    public init(configuration: TokenConfiguration) {
        self.configuration = configuration
    }

    /// Loads the module, finds the token and logs in once. Fails fast with a clear error.
    public func connect() throws(PKCS11Error) {
        try withSession { (_) throws(PKCS11Error) in }
    }

    /// Sessions currently open (idle and in use).
    public var openSessions: Int { lock.withLock { openCount } }

    /// Sessions currently lent out.
    public var sessionsInUse: Int { lock.withLock { openCount - idle.count } }

    /// Identifies when object handles found in this token may be reused: it changes when the module is
    /// re-initialised and whenever the token had to be logged in again (a token that lost its login may renumber its
    /// private objects; SoftHSM does). Read it inside `withSession`, before looking a handle up.
    public struct HandleEpoch: Hashable, Sendable {
        public let generation: UInt64
        public let logins: UInt64
    }

    public var handleEpoch: HandleEpoch {
        lock.withLock { HandleEpoch(generation: sessionGeneration, logins: logins) }
    }

    /// Runs `body` with a session of its own, logged in. Retries once after a lost session, login or device; the
    /// retry checks a pooled session's login before using it, since a lost login affects every session.
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
        do throws(E) {
            return try attempt(body, verifying: false, waitUntil: waitUntil)
        } catch {
            guard let token = error.tokenError, token.isSessionLost || token.isDeviceLost else { throw error }
            return try attempt(body, verifying: true, waitUntil: waitUntil)
        }
    }

    private func attempt<T, E: TokenCallError>(_ body: (Session) throws(E) -> T, verifying: Bool,
                                               waitUntil: ContinuousClock.Instant) throws(E) -> T {
        let module: PKCS11Module
        do throws(PKCS11Error) { module = try loadedModule() } catch { throw E(tokenError: error) }
        do throws(E) {
            return try module.lifetime.withReadLock { () throws(E) -> T in
                let session: Session
                do throws(PKCS11Error) {
                    session = try acquire(module, verifying: verifying, waitUntil: waitUntil)
                } catch {
                    throw E(tokenError: error)
                }
                do throws(E) {
                    let value = try body(session)
                    release(session, module: module)
                    return value
                } catch {
                    if let token = error.tokenError, token.isSessionLost || token.isDeviceLost {
                        discard(session)
                    } else {
                        release(session, module: module)
                    }
                    throw error
                }
            }
        } catch {
            // Outside the shared lifetime lock: re-initialisation takes it exclusively.
            if error.tokenError?.isDeviceLost == true { recover(module) }
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
        if let module = lock.withLock({ self.module }) { return module }
        let module = try PKCS11Module.load(path: configuration.modulePath)
        lock.withLock { self.module = module }
        return module
    }

    /// Takes an idle session of the current module generation or opens one (logging in when the token needs it).
    /// With `verifying`, a pooled session is first checked: a dead one is dropped and the next one tried, and one
    /// that lost its login is logged in again. Called with the module's lifetime lock held shared.
    private func acquire(_ module: PKCS11Module, verifying: Bool, waitUntil: ContinuousClock.Instant) throws(PKCS11Error) -> Session {
        // Bounded: every idle session may be dead, and then a fresh one must work.
        var tries = 0
        while true {
            let session = try acquireUnchecked(module, waitUntil: waitUntil)
            guard verifying else { return session }
            tries += 1
            do throws(PKCS11Error) {
                if try !session.isLoggedIn() { try login(session) }
                return session
            } catch {
                if error.isSessionLost && tries <= configuration.maxSessions {
                    discard(session)
                    continue
                }
                if error.isSessionLost || error.isDeviceLost {
                    discard(session)
                } else {
                    release(session, module: module)
                }
                throw error
            }
        }
    }

    private func acquireUnchecked(_ module: PKCS11Module, waitUntil: ContinuousClock.Instant) throws(PKCS11Error) -> Session {
        let generation = module.generation
        let waitStarted = ContinuousClock.now
        let reuse: Session? = try lock.withLock { () throws(PKCS11Error) -> Session? in
            if pinRejected { throw PKCS11Error(.pinRejected) }
            if sessionGeneration != generation {
                // The library was re-initialised: every session and the slot number are gone.
                idle.removeAll()
                openCount = 0
                slot = nil
                sessionGeneration = generation
            }
            while true {
                if let session = idle.popLast() { return session }
                if openCount < configuration.maxSessions {
                    openCount += 1
                    return nil
                }
                guard lock.waitLocked(until: waitUntil) else {
                    throw PKCS11Error(.noFreeSession(waited: ContinuousClock.now - waitStarted))
                }
            }
        }
        if let reuse { return reuse }
        do throws(PKCS11Error) {
            return try openLoggedInSession(module)
        } catch {
            lock.withLock {
                openCount -= 1
                lock.signalAllLocked()
            }
            throw error
        }
    }

    private func openLoggedInSession(_ module: PKCS11Module) throws(PKCS11Error) -> Session {
        let knownSlot = lock.withLock { slot }
        let slotID: CK_SLOT_ID
        if let knownSlot { slotID = knownSlot } else { slotID = try module.slot(forTokenLabel: configuration.tokenLabel) }
        lock.withLock { self.slot = slotID }
        let session = try module.openSession(slot: slotID)
        do throws(PKCS11Error) {
            if try !session.isLoggedIn() {
                try login(session)
            }
        } catch {
            session.close()
            throw error
        }
        return session
    }

    /// Exactly one `C_Login` per need; a rejected PIN is remembered and never tried again.
    private func login(_ session: Session) throws(PKCS11Error) {
        do throws(PKCS11Error) {
            try session.login(pin: configuration.pin)
            lock.withLock { logins += 1 }
        } catch {
            if case .pinRejected = error.kind { lock.withLock { pinRejected = true } }
            throw error
        }
    }

    private func release(_ session: Session, module: PKCS11Module) {
        lock.withLock {
            if sessionGeneration == module.generation {
                idle.append(session)
            } else {
                openCount = max(0, openCount - 1)
            }
            lock.signalAllLocked()
        }
    }

    private func discard(_ session: Session) {
        session.close()
        lock.withLock {
            openCount = max(0, openCount - 1)
            lock.signalAllLocked()
        }
    }

    /// Re-initialises the module after a device loss, at most once per `reconnectInterval`.
    private func recover(_ module: PKCS11Module) {
        let seen = module.generation
        let now = ContinuousClock.now
        let due: Bool = lock.withLock {
            if let last = lastReconnect, now - last < configuration.reconnectInterval { return false }
            lastReconnect = now
            return true
        }
        guard due else { return }
        // A failed re-initialisation leaves the module uninitialised: the next call fails with
        // CKR_CRYPTOKI_NOT_INITIALIZED, counts as a lost device, and tries again (rate-limited as above).
        try? module.reinitialize(ifGeneration: seen)
    }
}

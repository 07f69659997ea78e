import CPKCS11
import Lifecycle

/// Session-object copies of token keys: the fast path for Encrypt and Decrypt.
///
/// SoftHSM re-reads a token object's file on every operation, but not a session object's. `C_CopyObject` with
/// `CKA_TOKEN=false` (everything else inherited: still sensitive, never extractable, never leaves the module) gives a
/// session object that runs AES-GCM about three times as fast. A copy belongs to the session that made it and dies
/// with it, so the copies are made in one session of their own (the holder) that stays open and is used for nothing
/// else; every other session of the process may use them. The token object stays the authority: callers drop the
/// copies of keys that are retired, destroyed or gone at each refresh of the key list (`keep(only:)`), since a copy
/// keeps decrypting after the token object's `CKA_DECRYPT` is cleared.
///
/// Copies are tied to the token's handle epoch: a re-initialised module (its sessions are gone) or a new login
/// (private session objects die with a logout) starts over. A module that refuses the copy (`CKA_COPYABLE` false, a
/// policy) is remembered per key: the token object is used, and `onRefused` callbacks hear of it once.
public final class SessionKeyCopies: Sendable {
    /// For `/metrics`: copies in use, keys whose copy the module refused, and whether copies are enabled.
    public struct Status: Sendable, Equatable {
        public var active: Int
        public var refused: Int
        public var enabled: Bool

        public init(active: Int, refused: Int, enabled: Bool) {
            self.active = active
            self.refused = refused
            self.enabled = enabled
        }
    }

    private struct State {
        var enabled = true
        var epoch: Token.HandleEpoch?
        /// The session that owns every copy; only used under the lock, one call at a time.
        var holder: Session?
        var copies: [[UInt8]: CK_OBJECT_HANDLE] = [:]
        var refused: Set<[UInt8]> = []
        var toldRefusal = false
        var onRefused: [@Sendable (String) -> Void] = []
    }

    private let state = ConditionLock(State())

    public init() {}

    /// Turns the fast path on or off (`serve --session-key-copies`); off destroys no copy by itself: the next
    /// `keep(only:)` does.
    public func setEnabled(_ enabled: Bool) { state.withLock { $0.enabled = enabled } }

    public var status: Status {
        state.withLock { Status(active: $0.copies.count, refused: $0.refused.count, enabled: $0.enabled) }
    }

    /// Called once, with the module's answer, the first time a module refuses to copy a key.
    public func onRefused(_ callback: @escaping @Sendable (String) -> Void) {
        state.withLock { $0.onRefused.append(callback) }
    }

    /// The handle to run AES-GCM with for the key with CKA_ID `id` whose token object is `tokenObject`: its session
    /// copy, made now if needed, or `tokenObject` itself when copies are off, refused, or cannot be made right now.
    /// Call inside `Token.withSession` (the module's lifetime lock is held), with the epoch read there.
    public func handle(for id: [UInt8], tokenObject: CK_OBJECT_HANDLE, session: Session,
                       epoch: Token.HandleEpoch) -> CK_OBJECT_HANDLE {
        var refusal: (String, [@Sendable (String) -> Void])?
        let handle = state.withLock { s -> CK_OBJECT_HANDLE in
            guard s.enabled, !s.refused.contains(id) else { return tokenObject }
            SessionKeyCopies.follow(epoch, &s)
            if let copy = s.copies[id] { return copy }
            do throws(PKCS11Error) {
                let holder: Session
                if let open = s.holder {
                    holder = open
                } else {
                    holder = try session.module.openSession(slot: try session.slotID())
                    s.holder = holder
                }
                let copy = try holder.copyObject(tokenObject, template: [.bool(CKA_TOKEN, false)])
                s.copies[id] = copy
                return copy
            } catch {
                if error.isUnavailable {
                    // Not a refusal: the holder may be gone (it is opened again next time), or the token object's
                    // handle is stale (the caller's retry finds it again).
                    if error.rv == UInt(CKR_SESSION_HANDLE_INVALID) || error.rv == UInt(CKR_SESSION_CLOSED) { s.holder = nil }
                    return tokenObject
                }
                s.refused.insert(id)
                if !s.toldRefusal {
                    s.toldRefusal = true
                    refusal = (error.description, s.onRefused)
                }
                return tokenObject
            }
        }
        if let (reason, callbacks) = refusal { for callback in callbacks { callback(reason) } }
        return handle
    }

    /// Forgets the copy of `id` (the module says it is stale, or it refused an operation the token object may
    /// allow), destroying it when it still exists.
    public func forget(_ id: [UInt8], epoch: Token.HandleEpoch) {
        state.withLock { s in
            SessionKeyCopies.follow(epoch, &s)
            guard let copy = s.copies.removeValue(forKey: id) else { return }
            try? s.holder?.destroyObject(copy)
        }
    }

    /// Destroys every copy whose CKA_ID is not in `ids` (keys retired, destroyed or gone from the token, or every
    /// copy when copies are off). Call inside `Token.withSession`, after reading the key list.
    public func keep(only ids: Set<[UInt8]>, epoch: Token.HandleEpoch) {
        state.withLock { s in
            SessionKeyCopies.follow(epoch, &s)
            for (id, copy) in s.copies where !s.enabled || !ids.contains(id) {
                try? s.holder?.destroyObject(copy)
                s.copies[id] = nil
            }
        }
    }

    /// Starts over when the handle epoch changed: after a re-initialisation the holder and its copies are gone (the
    /// old session handle may already name another session, so it is not closed); after a new login the holder is
    /// still open but the copies of private keys died with the logout.
    private static func follow(_ epoch: Token.HandleEpoch, _ s: inout State) {
        guard s.epoch != epoch else { return }
        if s.epoch?.initialization != epoch.initialization { s.holder = nil }
        s.copies.removeAll()
        s.epoch = epoch
    }
}

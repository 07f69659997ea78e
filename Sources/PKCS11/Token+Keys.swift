import CPKCS11
import Lifecycle

/// Object handles of the token's secret keys by `CKA_ID`, valid for one handle epoch (module initialisation and login).
public final class KeyHandleCache: Sendable {
    private let handles = ConditionLock<[[UInt8]: (epoch: Token.HandleEpoch, handle: CK_OBJECT_HANDLE)]>([:])

    func get(_ id: [UInt8], epoch: Token.HandleEpoch) -> CK_OBJECT_HANDLE? {
        handles.withLock { $0[id] }.flatMap { $0.epoch == epoch ? $0.handle : nil }
    }

    /// Remembers handles found while reading the key list (inside `withSession`, with the epoch read there).
    public func store(_ found: [(id: [UInt8], handle: CK_OBJECT_HANDLE)], epoch: Token.HandleEpoch) {
        handles.withLock { for (id, handle) in found { $0[id] = (epoch, handle) } }
    }

    public func forget(_ id: [UInt8]) {
        _ = handles.withLock { $0.removeValue(forKey: id) }
    }
}

extension Token {
    /// The handle of the token's secret key with CKA_ID `id`, cached for the current handle epoch; looked up (and its
    /// attributes checked again: the object behind an id may have changed) when not cached. Nil when absent.
    /// `name` names the key in errors. Call inside `withSession`.
    public func keyHandle(id: [UInt8], name: String, in session: Session) throws(PKCS11Error) -> CK_OBJECT_HANDLE? {
        let epoch = handleEpoch
        if let cached = keyHandles.get(id, epoch: epoch) { return cached }
        let objects = try session.findObjects(KeyObjects.secretKeyTemplate + [.bytes(CKA_ID, id)])
        guard let handle = objects.first else { return nil }
        guard objects.count == 1 else {
            throw PKCS11Error(.object("root key \(name) is invalid: CKA_ID shared with another object; it is never used"))
        }
        let problems = try KeyObjects.aes256Problems(of: handle, in: session)
        guard problems.isEmpty else {
            throw PKCS11Error(.object("root key \(name) is invalid: \(problems.joined(separator: ", ")); it is never used"))
        }
        keyHandles.store([(id, handle)], epoch: epoch)
        return handle
    }

    /// Runs `body` with a session and the handle of the key with CKA_ID `id`: its session copy when `copy` (the fast
    /// path, see `SessionKeyCopies`), else the token object. A copy the module calls stale or not permitted is
    /// dropped and `body` runs once more with the token object, the authority. When the token says the token
    /// object's handle is stale, it is looked up again and `body` runs once more in the same session. If the key
    /// cannot be found again (e.g. the session lost its login, which hides private objects), the stale-handle error
    /// goes to `withSession`, which retries with a checked login. A key missing from a token that should hold it is
    /// first checked against a storage outage (`confirmPresent`).
    public func withKey<T>(id: [UInt8], name: String, copy: Bool, deadline: ContinuousClock.Instant?,
                           _ body: (Session, CK_OBJECT_HANDLE) throws(PKCS11Error) -> T) throws(PKCS11Error) -> T {
        try withSession(deadline: deadline) { (session) throws(PKCS11Error) -> T in
            let epoch = handleEpoch
            guard let handle = try keyHandle(id: id, name: name, in: session) else {
                try confirmPresent(session)
                throw PKCS11Error(.object("root key \(name) is not in the token"))
            }
            let object = copy ? sessionKeyCopies.handle(for: id, tokenObject: handle, session: session, epoch: epoch) : handle
            do throws(PKCS11Error) {
                return try body(session, object)
            } catch {
                var failure = error
                if object != handle, failure.isStaleHandle || failure.failure == .keyDisabled {
                    // A copy made in the instant a key was retired inherits CKA_DECRYPT=false and would outlive a restore.
                    sessionKeyCopies.forget(id, epoch: epoch)
                    do throws(PKCS11Error) {
                        return try body(session, handle)
                    } catch {
                        failure = error
                    }
                }
                guard failure.isStaleHandle else { throw failure }
                keyHandles.forget(id)
                guard let fresh = try? keyHandle(id: id, name: name, in: session), fresh != handle else {
                    try confirmPresent(session)
                    throw failure
                }
                do throws(PKCS11Error) {
                    return try body(session, fresh)
                } catch let again {
                    if again.isStaleHandle { keyHandles.forget(id) }
                    throw again
                }
            }
        }
    }
}

/// A key to run AES-GCM with: its `CKA_ID`, its name for errors, and whether it runs with its session copy (the
/// fast path, see `SessionKeyCopies`) or with the token object.
public struct KeyReference: Sendable {
    public let id: [UInt8]
    public let name: String
    public let sessionCopy: Bool

    public init(id: [UInt8], name: String, sessionCopy: Bool) {
        self.id = id
        self.name = name
        self.sessionCopy = sessionCopy
    }
}

extension Token {
    /// AES-GCM encryption under `key` (ciphertext‖tag), with `withKey`'s lookup and retries. The caller supplies a
    /// fresh random IV for every call.
    public func encryptAESGCM(_ key: KeyReference, iv: [UInt8], aad: [UInt8], plaintext: [UInt8],
                              deadline: ContinuousClock.Instant?) throws(PKCS11Error) -> [UInt8] {
        try withKey(id: key.id, name: key.name, copy: key.sessionCopy, deadline: deadline) { (session, handle) throws(PKCS11Error) in
            try session.encryptAESGCM(key: handle, iv: iv, aad: aad, plaintext: plaintext)
        }
    }

    /// AES-GCM decryption under `key`; a wrong tag, key or AAD fails with `TokenFailure.authenticationFailed`.
    public func decryptAESGCM(_ key: KeyReference, iv: [UInt8], aad: [UInt8], ciphertext: [UInt8],
                              deadline: ContinuousClock.Instant?) throws(PKCS11Error) -> [UInt8] {
        try withKey(id: key.id, name: key.name, copy: key.sessionCopy, deadline: deadline) { (session, handle) throws(PKCS11Error) in
            try session.decryptAESGCM(key: handle, iv: iv, aad: aad, ciphertext: ciphertext)
        }
    }
}

extension PKCS11Error {
    /// The token no longer knows an object handle (it was renumbered or the object is gone).
    var isStaleHandle: Bool { rv == UInt(CKR_KEY_HANDLE_INVALID) || rv == UInt(CKR_OBJECT_HANDLE_INVALID) }
}

import CPKCS11
import PKCS11

extension KeyRing {
    /// Stops a non-current key from decrypting, reversibly: clears `CKA_DECRYPT` (and `CKA_ENCRYPT`) on the key in
    /// the token, so the token itself refuses it in every process.
    public func retire(_ id: RootKeyID) throws(KMSError) -> RootKey {
        try changeState(id) { (key, handle, session) throws(KMSError) in
            switch key.state {
            case .current:
                throw KMSError(.failedPrecondition, "\(key.keyID) is the current key; rotate first, then retire it")
            case .retired:
                return
            case .pending:
                throw KMSError(.failedPrecondition, "\(key.keyID) is pending (an unfinished rotation); run 'p11kms rotate' to finish it")
            case .active:
                do throws(PKCS11Error) {
                    try session.setAttributes([.bool(CKA_DECRYPT, false), .bool(CKA_ENCRYPT, false)], of: handle)
                } catch {
                    throw KMSError.token(error)
                }
            }
        }
    }

    /// Undoes `retire`.
    public func restore(_ id: RootKeyID) throws(KMSError) -> RootKey {
        try changeState(id) { (key, handle, session) throws(KMSError) in
            guard key.state == .retired else { return }
            do throws(PKCS11Error) {
                try session.setAttributes([.bool(CKA_ENCRYPT, true), .bool(CKA_DECRYPT, true)], of: handle)
            } catch {
                throw KMSError.token(error)
            }
        }
    }

    /// Deletes a retired key for good. Never the current key, never an active one: retire it first.
    public func destroy(_ id: RootKeyID) throws(KMSError) {
        do throws(PKCS11Error) {
            try refresh()
        } catch {
            throw KMSError.token(error)
        }
        if let bad = invalidKey(id) { throw KMSError(.failedPrecondition, "\(bad); it is never used, and not destroyed by p11kms") }
        guard let key = key(id) else { throw KMSError.invalid("no root key \(id.keyID) in the token") }
        guard key.state == .retired else {
            throw KMSError(.failedPrecondition, "\(key.keyID) is \(key.state.rawValue); only a retired key can be destroyed ('p11kms retire' first)")
        }
        do throws(PKCS11Error) {
            try token.withSession { (session) throws(PKCS11Error) in
                // Re-check in the token itself, in case another process restored it meanwhile.
                let keys = try KeyRing.readKeys(session).keys
                guard let found = keys.first(where: { $0.key.id == id }) else { return }
                guard found.key.state == .retired else {
                    throw PKCS11Error(.object("\(id.keyID) is no longer retired; not destroyed"))
                }
                try session.destroyObject(found.handle)
            }
            forgetHandle(of: id)
            try refresh()
        } catch {
            throw KMSError.token(error)
        }
    }

    private func changeState(_ id: RootKeyID, _ change: (RootKey, CK_OBJECT_HANDLE, Session) throws(KMSError) -> Void) throws(KMSError) -> RootKey {
        try token.withSession { (session) throws(KMSError) in
            let scan: Scan
            do throws(PKCS11Error) { scan = try KeyRing.readKeys(session) } catch { throw KMSError.token(error) }
            let found = try scan.usable(id)
            try change(found.key, found.handle, session)
        }
        do throws(PKCS11Error) {
            try refresh()
        } catch {
            throw KMSError.token(error)
        }
        guard let key = key(id) else { throw KMSError(.internal, "\(id.keyID) vanished from the token") }
        return key
    }
}

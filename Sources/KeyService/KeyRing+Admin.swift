import PKCS11

extension KeyRing {
    /// Stops a non-current key from decrypting, reversibly: switches the key off in the token (`CKA_DECRYPT` and
    /// `CKA_ENCRYPT` cleared), so the token itself refuses it in every process.
    public func retire(_ id: RootKeyID) throws(KMSError) -> RootKey {
        try changeState(id) { (key, object, objects) throws(KMSError) in
            switch key.state {
            case .current:
                throw KMSError(.failedPrecondition, "\(key.keyID) is the current key; rotate first, then retire it")
            case .retired:
                return
            case .pending:
                throw KMSError(.failedPrecondition, "\(key.keyID) is pending (an unfinished rotation); run 'p11kms rotate' to finish it")
            case .active:
                try KMSError.mapping { () throws(PKCS11Error) in try objects.setEnabled(object, false) }
            }
        }
    }

    /// Undoes `retire`.
    public func restore(_ id: RootKeyID) throws(KMSError) -> RootKey {
        try changeState(id) { (key, object, objects) throws(KMSError) in
            guard key.state == .retired else { return }
            try KMSError.mapping { () throws(PKCS11Error) in try objects.setEnabled(object, true) }
        }
    }

    /// Deletes a retired key for good. Never the current key, never an active one: retire it first.
    public func destroy(_ id: RootKeyID) throws(KMSError) {
        _ = try KMSError.mapping { () throws(PKCS11Error) in try refresh() }
        if let bad = invalidKey(id) { throw KMSError(.failedPrecondition, "\(bad); it is never used, and not destroyed by p11kms") }
        guard let key = key(id) else { throw KMSError.invalid("no root key \(id.keyID) in the token") }
        guard key.state == .retired else {
            throw KMSError(.failedPrecondition, "\(key.keyID) is \(key.state.rawValue); only a retired key can be destroyed ('p11kms retire' first)")
        }
        do throws(PKCS11Error) {
            try token.withObjects { (objects) throws(PKCS11Error) in
                // Re-check in the token itself, in case another process restored it meanwhile.
                guard let found = try KeyRing.readKeys(objects).keys.first(where: { $0.key.id == id }) else { return }
                guard found.key.state == .retired else {
                    throw PKCS11Error(.object("\(id.keyID) is no longer retired; not destroyed"))
                }
                try objects.destroy(found.object)
            }
            try refresh()
        } catch {
            throw KMSError.token(error)
        }
    }

    /// Reads the keys, applies `change` to `id` in the same session (it throws to refuse), and reads them again.
    private func changeState(_ id: RootKeyID,
                             _ change: (RootKey, SecretKeyObject, KeyObjects) throws(KMSError) -> Void) throws(KMSError) -> RootKey {
        try token.withObjects { (objects) throws(KMSError) in
            let found = try KMSError.mapping { () throws(PKCS11Error) in try KeyRing.readKeys(objects) }.usable(id)
            try change(found.key, found.object, objects)
        }
        _ = try KMSError.mapping { () throws(PKCS11Error) in try refresh() }
        guard let key = key(id) else { throw KMSError(.internal, "\(id.keyID) vanished from the token") }
        return key
    }
}

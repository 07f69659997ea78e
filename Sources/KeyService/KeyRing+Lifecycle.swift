import PKCS11
#if canImport(Glibc)
import Glibc
#endif

extension KeyRing {
    /// Makes sure a current key exists: returns it, or generates the first one. Idempotent.
    public func initialize() throws(KMSError) -> (key: RootKey, created: Bool) {
        _ = try KMSError.mapping { () throws(PKCS11Error) in try refresh() }
        if let current { return (current, false) }
        return (try rotate(), true)
    }

    /// Generates a new root key inside the token and makes it current.
    ///
    /// Crash-safe in two steps: the key is generated under a *pending* label (never used), verified with a real
    /// AES-GCM round trip, and only then relabelled, which makes it current (the newest non-retired key). Killed at
    /// any instant, the token holds exactly one current key (the old or the new one); running `rotate` again
    /// finishes a verified pending key instead of generating another. Nothing is ever deleted.
    ///
    /// With `stageOnly`, the new key is left pending: it is in the token and can already decrypt, but is not current.
    /// That is the first half of a rotation across several token copies (SoftHSM on several control-plane nodes):
    /// stage, copy the token to every node, then run `rotate` on each copy, which promotes the staged key.
    public func rotate(now: Int = Int(time(nil)), stageOnly: Bool = false) throws(KMSError) -> RootKey {
        do throws(PKCS11Error) {
            let id = try token.withObjects { (objects) throws(PKCS11Error) -> RootKeyID in
                let scan = try KeyRing.readKeys(objects)
                let existing = scan.keys
                if let pending = existing.last(where: { $0.key.state == .pending }),
                   pending.key.generation > (existing.filter { $0.key.state != .pending }.map(\.key.generation).max() ?? 0),
                   (try? KeyRing.verify(pending.object, in: objects)) == true {
                    if !stageOnly { try KeyRing.promote(pending.key, object: pending.object, in: objects) }
                    return pending.key.id
                }
                let generation = scan.highestGeneration + 1
                let id = RootKeyID.random()
                let pendingLabel = RootKey.label(generation: generation, createdAt: now, pending: true)
                // AES-256 generated inside the token: persistent, private, sensitive, never extractable,
                // encrypt/decrypt only (`KeyObjects.generateAES256Key`).
                let object = try objects.generateAES256Key(id: id.bytes, label: pendingLabel)
                guard object.problems.isEmpty else {
                    throw PKCS11Error(.object("the token made the new root key \(id.keyID) unusable (\(object.problems.joined(separator: ", "))); it was left pending"))
                }
                guard try KeyRing.verify(object, in: objects) else {
                    throw PKCS11Error(.object("the new root key failed its AES-GCM self-test; it was left pending"))
                }
                let key = RootKey(id: id, label: pendingLabel, generation: generation, createdAt: now, state: .pending)
                if !stageOnly { try KeyRing.promote(key, object: object, in: objects) }
                return id
            }
            try refresh()
            guard let key = key(id) else { throw PKCS11Error(.object("the new root key is not visible in the token")) }
            // Callers serialise rotations (p11kms holds a file lock); this catches one it could not see (another
            // host on the same HSM): never report a key as made current when another one is.
            if !stageOnly, let current, current.id != id {
                throw PKCS11Error(.object("the new root key \(id.keyID) was made, but \(current.keyID) is current: another rotation ran at the same time; run 'p11kms keys'"))
            }
            return key
        } catch {
            throw KMSError.token(error)
        }
    }

    /// Relabels a verified pending key with its final label: the single write that makes it current.
    static func promote(_ key: RootKey, object: SecretKeyObject, in objects: KeyObjects) throws(PKCS11Error) {
        try objects.relabel(object, to: RootKey.label(generation: key.generation, createdAt: key.createdAt))
    }

    /// A real AES-GCM round trip under `object`.
    static func verify(_ object: SecretKeyObject, in objects: KeyObjects) throws(PKCS11Error) -> Bool {
        var probe = SecureRandom.bytes(32)
        defer { Zeroize.bytes(&probe) }
        let iv = SecureRandom.bytes(Envelope.ivLength)
        let aad = Array("p11kms self-test".utf8)
        let sealed = try objects.encryptAESGCM(object, iv: iv, aad: aad, plaintext: probe)
        var opened = try objects.decryptAESGCM(object, iv: iv, aad: aad, ciphertext: sealed)
        defer { Zeroize.bytes(&opened) }
        return opened == probe
    }
}

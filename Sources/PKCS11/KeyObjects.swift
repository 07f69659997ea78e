import CPKCS11

/// A secret-key object in the token, described by the token's own attributes: what a caller needs to decide whether
/// it is a usable AES-256 key, without PKCS#11 types. Its handle is valid only inside the `KeyObjects` access that
/// found it.
public struct SecretKeyObject: Sendable, Equatable {
    public let label: String
    /// `CKA_ID`, nil when the object has none.
    public let id: [UInt8]?
    /// `CKA_DECRYPT`: false for a key whose use was switched off (`KeyObjects.setEnabled`).
    public let decryptEnabled: Bool
    /// What keeps it from being an AES-256 key the module guards: empty when the token says AES, a 32-byte value,
    /// sensitive and not extractable; otherwise e.g. "extractable", "not sensitive", "value is 16 bytes, not 32".
    public let problems: [String]
    let handle: CK_OBJECT_HANDLE
}

/// A small stored value (`CKO_DATA`, token object, private) such as a counter, found by its label.
public struct DataObject: Sendable, Equatable {
    public let label: String
    public let value: [UInt8]
    let handle: CK_OBJECT_HANDLE
}

/// The token's objects as seen through one logged-in session, lent by `Token.withObjects`: reading, generating,
/// relabelling, switching off and deleting AES-256 keys, and the data objects kept beside them. Every PKCS#11
/// template lives here, so callers deal in labels, ids and states only. Valid only inside the closure it is lent to.
public struct KeyObjects {
    let token: Token
    let session: Session
    /// The handle epoch read when the access began: handles found through it are cached under it.
    let epoch: Token.HandleEpoch

    /// Token secret keys only: the session copies (`SessionKeyCopies`) are not keys of the token.
    static let secretKeyTemplate: [Attribute] = [.ulong(CKA_CLASS, CK_ULONG(CKO_SECRET_KEY)), .bool(CKA_TOKEN, true)]
    static let dataTemplate: [Attribute] = [.ulong(CKA_CLASS, CK_ULONG(CKO_DATA)), .bool(CKA_TOKEN, true)]

    /// Every secret key of the token whose label `labelMatches` accepts (whatever its key type: a caller wants to
    /// hear of an object labelled like its keys that is not one), with the attributes that decide whether it is usable.
    public func secretKeys(labelled labelMatches: (String) -> Bool) throws(PKCS11Error) -> [SecretKeyObject] {
        var found: [SecretKeyObject] = []
        for object in try session.findObjects(KeyObjects.secretKeyTemplate) {
            guard let labelBytes = try session.attribute(CKA_LABEL, of: object) else { continue }
            let label = String(decoding: labelBytes, as: UTF8.self)
            guard labelMatches(label) else { continue }
            found.append(SecretKeyObject(
                label: label, id: try session.attribute(CKA_ID, of: object),
                decryptEnabled: try session.boolAttribute(CKA_DECRYPT, of: object) ?? false,
                problems: try KeyObjects.aes256Problems(of: object, in: session), handle: object))
        }
        return found
    }

    /// Caches the handles of the usable keys for `Token.withKey` and forgets those of unusable ones; drops the
    /// session copy of every key not in `copied` (only the keys in it may keep running with a copy: a copy keeps
    /// decrypting after its token object is switched off). Call after reading the key list.
    public func remember(usable: [SecretKeyObject], unusable: [SecretKeyObject], keepCopiesOf copied: Set<[UInt8]>) {
        token.sessionKeyCopies.keep(only: copied, epoch: epoch)
        token.keyHandles.store(usable.compactMap { key in key.id.map { ($0, key.handle) } }, epoch: epoch)
        for key in unusable { if let id = key.id { token.keyHandles.forget(id) } }
    }

    /// Confirms that the session's token is still readable and the configured one; throws an unavailable error
    /// otherwise (see `Token.confirmPresent`). Call when objects known to exist are missing.
    public func confirmPresent() throws(PKCS11Error) {
        try token.confirmPresent(session)
    }

    /// Generates an AES-256 key inside the token: persistent, private, sensitive, never extractable, for encrypt and
    /// decrypt only (no wrap, sign or derive), modifiable so that it can be relabelled and switched off.
    public func generateAES256Key(id: [UInt8], label: String) throws(PKCS11Error) -> SecretKeyObject {
        let template: [Attribute] = [
            .ulong(CKA_CLASS, CK_ULONG(CKO_SECRET_KEY)),
            .ulong(CKA_KEY_TYPE, CK_ULONG(CKK_AES)),
            .ulong(CKA_VALUE_LEN, 32),
            .bool(CKA_TOKEN, true),
            .bool(CKA_PRIVATE, true),
            .bool(CKA_SENSITIVE, true),
            .bool(CKA_EXTRACTABLE, false),
            .bool(CKA_ENCRYPT, true),
            .bool(CKA_DECRYPT, true),
            .bool(CKA_WRAP, false),
            .bool(CKA_UNWRAP, false),
            .bool(CKA_SIGN, false),
            .bool(CKA_VERIFY, false),
            .bool(CKA_DERIVE, false),
            .bool(CKA_MODIFIABLE, true),
            .string(CKA_LABEL, label),
            .bytes(CKA_ID, id),
        ]
        let handle = try session.generateKey(mechanism: CK_MECHANISM_TYPE(CKM_AES_KEY_GEN), template: template)
        return SecretKeyObject(label: label, id: id, decryptEnabled: true,
                               problems: try KeyObjects.aes256Problems(of: handle, in: session), handle: handle)
    }

    /// Gives a key a new label.
    public func relabel(_ key: SecretKeyObject, to label: String) throws(PKCS11Error) {
        try session.setAttributes([.string(CKA_LABEL, label)], of: key.handle)
    }

    /// Switches a key's use on or off in the token itself (`CKA_ENCRYPT` and `CKA_DECRYPT`): every process on the
    /// token is refused an operation under a key switched off (`TokenFailure.keyDisabled`). Reversible.
    public func setEnabled(_ key: SecretKeyObject, _ enabled: Bool) throws(PKCS11Error) {
        let order: [CK_ATTRIBUTE_TYPE] = enabled ? [CKA_ENCRYPT, CKA_DECRYPT] : [CKA_DECRYPT, CKA_ENCRYPT]
        try session.setAttributes(order.map { .bool($0, enabled) }, of: key.handle)
    }

    /// Deletes a key for good, and its cached handle.
    public func destroy(_ key: SecretKeyObject) throws(PKCS11Error) {
        try session.destroyObject(key.handle)
        if let id = key.id { token.keyHandles.forget(id) }
    }

    /// AES-GCM encryption under `key` in this session (ciphertext‖tag), e.g. a new key's self-test.
    public func encryptAESGCM(_ key: SecretKeyObject, iv: [UInt8], aad: [UInt8], plaintext: [UInt8]) throws(PKCS11Error) -> [UInt8] {
        try session.encryptAESGCM(key: key.handle, iv: iv, aad: aad, plaintext: plaintext)
    }

    /// AES-GCM decryption under `key` in this session.
    public func decryptAESGCM(_ key: SecretKeyObject, iv: [UInt8], aad: [UInt8], ciphertext: [UInt8]) throws(PKCS11Error) -> [UInt8] {
        try session.decryptAESGCM(key: key.handle, iv: iv, aad: aad, ciphertext: ciphertext)
    }

    /// What is wrong with a secret-key object as an AES-256 key, from the token's own attributes: empty when it is
    /// AES with a 32-byte value, sensitive and not extractable.
    static func aes256Problems(of object: CK_OBJECT_HANDLE, in session: Session) throws(PKCS11Error) -> [String] {
        var problems: [String] = []
        if try session.ulongAttribute(CKA_KEY_TYPE, of: object) != CK_ULONG(CKK_AES) { problems.append("not an AES key") }
        if let length = try session.ulongAttribute(CKA_VALUE_LEN, of: object) {
            if length != 32 { problems.append("value is \(length) bytes, not 32") }
        } else {
            problems.append("value length unknown")
        }
        if try session.boolAttribute(CKA_SENSITIVE, of: object) != true { problems.append("not sensitive") }
        if try session.boolAttribute(CKA_EXTRACTABLE, of: object) != false { problems.append("extractable") }
        return problems
    }
}

extension KeyObjects {
    /// The data objects whose label starts with `prefix` (or equals it, with `exact`).
    public func dataObjects(labelPrefix prefix: String, exact: Bool = false) throws(PKCS11Error) -> [DataObject] {
        let template = exact ? KeyObjects.dataTemplate + [.string(CKA_LABEL, prefix)] : KeyObjects.dataTemplate
        var found: [DataObject] = []
        for object in try session.findObjects(template) {
            guard let label = try session.attribute(CKA_LABEL, of: object).map({ String(decoding: $0, as: UTF8.self) }),
                  label.hasPrefix(prefix), let value = try session.attribute(CKA_VALUE, of: object) else { continue }
            found.append(DataObject(label: label, value: value, handle: object))
        }
        return found
    }

    /// Stores a new private data object. A data object's value cannot be changed (SoftHSM answers
    /// `CKR_ATTRIBUTE_READ_ONLY`): a new value is a new object, and the old one is destroyed after it exists.
    @discardableResult
    public func createDataObject(label: String, application: String, value: [UInt8]) throws(PKCS11Error) -> DataObject {
        let handle = try session.createObject(KeyObjects.dataTemplate + [
            .bool(CKA_PRIVATE, true), .string(CKA_LABEL, label), .string(CKA_APPLICATION, application),
            .bytes(CKA_VALUE, value),
        ])
        return DataObject(label: label, value: value, handle: handle)
    }

    public func destroy(_ object: DataObject) throws(PKCS11Error) {
        try session.destroyObject(object.handle)
    }
}

extension Token {
    /// Runs `body` with the token's objects seen through a session of its own (`withSession`'s retries apply).
    public func withObjects<T, E: TokenCallError>(deadline: ContinuousClock.Instant? = nil,
                                                  _ body: (KeyObjects) throws(E) -> T) throws(E) -> T {
        try withSession(deadline: deadline) { (session) throws(E) -> T in
            try body(KeyObjects(token: self, session: session, epoch: handleEpoch))
        }
    }
}

import CPKCS11

/// A PKCS#11 object handle (`CK_OBJECT_HANDLE`), for code that does not import the C header.
public typealias ObjectHandle = CK_OBJECT_HANDLE

/// One PKCS#11 session. A session runs one operation at a time: the pool in `Token` hands each to one caller.
public struct Session: Sendable {
    let module: PKCS11Module
    public let handle: CK_SESSION_HANDLE
    /// The module initialisation the session was opened in: object handles cached for it are valid only while the
    /// module has not been re-initialised.
    public let initialization: UInt64

    var f: CK_FUNCTION_LIST { module.functions }

    /// `C_Login` as the user. `CKR_USER_ALREADY_LOGGED_IN` counts as success (login state is per token).
    public func login(pin: [UInt8]) throws(PKCS11Error) {
        var pin = pin
        let rv = pin.withUnsafeMutableBufferPointer { f.C_Login(handle, CK_USER_TYPE(CKU_USER), $0.baseAddress, CK_ULONG($0.count)) }
        for i in pin.indices { pin[i] = 0 }
        guard rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN else {
            if rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_EXPIRED || rv == CKR_PIN_LEN_RANGE {
                throw PKCS11Error(.pinRejected)
            }
            throw .call("C_Login", rv)
        }
    }

    /// `C_CloseSession`, ignoring failures (the session may already be gone).
    public func close() {
        _ = f.C_CloseSession(handle)
    }

    /// A cheap call that fails when the token or session is gone.
    public func ping() throws(PKCS11Error) {
        var info = CK_SESSION_INFO()
        let rv = f.C_GetSessionInfo(handle, &info)
        guard rv == CKR_OK else { throw .call("C_GetSessionInfo", rv) }
    }

    /// The slot the session was opened on.
    public func slotID() throws(PKCS11Error) -> CK_SLOT_ID {
        var info = CK_SESSION_INFO()
        let rv = f.C_GetSessionInfo(handle, &info)
        guard rv == CKR_OK else { throw .call("C_GetSessionInfo", rv) }
        return info.slotID
    }

    /// Whether the session's user is logged in.
    public func isLoggedIn() throws(PKCS11Error) -> Bool {
        var info = CK_SESSION_INFO()
        let rv = f.C_GetSessionInfo(handle, &info)
        guard rv == CKR_OK else { throw .call("C_GetSessionInfo", rv) }
        return info.state == CKS_RW_USER_FUNCTIONS || info.state == CKS_RO_USER_FUNCTIONS
    }

    /// All objects matching `template`.
    public func findObjects(_ template: [Attribute]) throws(PKCS11Error) -> [CK_OBJECT_HANDLE] {
        let rv = withTemplate(template) { f.C_FindObjectsInit(handle, $0, $1) }
        guard rv == CKR_OK else { throw .call("C_FindObjectsInit", rv) }
        var result: [CK_OBJECT_HANDLE] = []
        var batch = [CK_OBJECT_HANDLE](repeating: 0, count: 64)
        while true {
            var count: CK_ULONG = 0
            let rv = batch.withUnsafeMutableBufferPointer { f.C_FindObjects(handle, $0.baseAddress, CK_ULONG($0.count), &count) }
            guard rv == CKR_OK else {
                _ = f.C_FindObjectsFinal(handle)
                throw .call("C_FindObjects", rv)
            }
            if count == 0 { break }
            result.append(contentsOf: batch.prefix(Int(count)))
        }
        let finalRV = f.C_FindObjectsFinal(handle)
        guard finalRV == CKR_OK else { throw .call("C_FindObjectsFinal", finalRV) }
        return result
    }

    /// The raw value of one attribute, or nil when the object does not have it.
    /// Sensitive attributes fail with `CKR_ATTRIBUTE_SENSITIVE`.
    public func attribute(_ type: CK_ATTRIBUTE_TYPE, of object: CK_OBJECT_HANDLE) throws(PKCS11Error) -> [UInt8]? {
        var attribute = CK_ATTRIBUTE(type: type, pValue: nil, ulValueLen: 0)
        var rv = f.C_GetAttributeValue(handle, object, &attribute, 1)
        if rv == CKR_ATTRIBUTE_TYPE_INVALID { return nil }
        guard rv == CKR_OK else { throw .call("C_GetAttributeValue", rv) }
        if attribute.ulValueLen == CK_ULONG.max { return nil }
        var value = [UInt8](repeating: 0, count: Int(attribute.ulValueLen))
        rv = value.withUnsafeMutableBytes { buffer in
            attribute.pValue = buffer.baseAddress
            return f.C_GetAttributeValue(handle, object, &attribute, 1)
        }
        guard rv == CKR_OK else { throw .call("C_GetAttributeValue", rv) }
        return Array(value.prefix(Int(attribute.ulValueLen)))
    }

    public func boolAttribute(_ type: CK_ATTRIBUTE_TYPE, of object: CK_OBJECT_HANDLE) throws(PKCS11Error) -> Bool? {
        guard let value = try attribute(type, of: object), let first = value.first else { return nil }
        return first != 0
    }

    public func ulongAttribute(_ type: CK_ATTRIBUTE_TYPE, of object: CK_OBJECT_HANDLE) throws(PKCS11Error) -> CK_ULONG? {
        guard let value = try attribute(type, of: object), value.count == MemoryLayout<CK_ULONG>.size else { return nil }
        return value.withUnsafeBytes { $0.loadUnaligned(as: CK_ULONG.self) }
    }

    /// Sets attributes on an existing object.
    public func setAttributes(_ template: [Attribute], of object: CK_OBJECT_HANDLE) throws(PKCS11Error) {
        let rv = withTemplate(template) { f.C_SetAttributeValue(handle, object, $0, $1) }
        guard rv == CKR_OK else { throw .call("C_SetAttributeValue", rv) }
    }

    /// Generates a secret key inside the token with `mechanism` (e.g. `CKM_AES_KEY_GEN`).
    public func generateKey(mechanism: CK_MECHANISM_TYPE, template: [Attribute]) throws(PKCS11Error) -> CK_OBJECT_HANDLE {
        var mech = CK_MECHANISM(mechanism: mechanism, pParameter: nil, ulParameterLen: 0)
        var key: CK_OBJECT_HANDLE = 0
        let rv = withTemplate(template) { f.C_GenerateKey(handle, &mech, $0, $1, &key) }
        guard rv == CKR_OK else { throw .call("C_GenerateKey", rv) }
        return key
    }

    /// Copies an object with `template` overriding attributes (e.g. `CKA_TOKEN=false` for a session copy).
    public func copyObject(_ object: CK_OBJECT_HANDLE, template: [Attribute]) throws(PKCS11Error) -> CK_OBJECT_HANDLE {
        var copy: CK_OBJECT_HANDLE = 0
        let rv = withTemplate(template) { f.C_CopyObject(handle, object, $0, $1, &copy) }
        guard rv == CKR_OK else { throw .call("C_CopyObject", rv) }
        return copy
    }

    /// Deletes an object for good.
    public func destroyObject(_ object: CK_OBJECT_HANDLE) throws(PKCS11Error) {
        let rv = f.C_DestroyObject(handle, object)
        guard rv == CKR_OK else { throw .call("C_DestroyObject", rv) }
    }

    /// Random bytes from the token's generator.
    public func generateRandom(count: Int) throws(PKCS11Error) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let rv = out.withUnsafeMutableBufferPointer { f.C_GenerateRandom(handle, $0.baseAddress, CK_ULONG(count)) }
        guard rv == CKR_OK else { throw .call("C_GenerateRandom", rv) }
        return out
    }
}

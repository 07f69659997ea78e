import CPKCS11

extension Session {
    /// The length of the GCM tag appended to every ciphertext.
    public static let gcmTagLength = 16

    /// AES-GCM encryption inside the token: returns ciphertext‖tag.
    /// The caller supplies a fresh random IV for every call (tokens such as SoftHSM do not prevent IV reuse).
    public func encryptAESGCM(key: CK_OBJECT_HANDLE, iv: [UInt8], aad: [UInt8], plaintext: [UInt8]) throws(PKCS11Error) -> [UInt8] {
        let outCapacity = plaintext.count + Session.gcmTagLength
        return try withGCMMechanism(iv: iv, aad: aad) { (mech) throws(PKCS11Error) -> [UInt8] in
            var rv = f.C_EncryptInit(handle, mech, key)
            guard rv == CKR_OK else { throw .call("C_EncryptInit", rv) }
            var outLength = CK_ULONG(outCapacity)
            // The caller's plaintext is passed in place (PKCS#11 declares the input non-const but never writes it):
            // a `var` copy made unique for a mutable pointer would be a second copy of the data key, left unzeroed.
            let out = [UInt8](unsafeUninitializedCapacity: outCapacity) { buffer, initialized in
                rv = plaintext.withUnsafeBufferPointer { inBuf in
                    f.C_Encrypt(handle, UnsafeMutablePointer(mutating: inBuf.baseAddress), CK_ULONG(inBuf.count), buffer.baseAddress, &outLength)
                }
                initialized = rv == CKR_OK ? min(Int(outLength), outCapacity) : 0
            }
            guard rv == CKR_OK else { throw .call("C_Encrypt", rv) }
            return out
        }
    }

    /// AES-GCM decryption inside the token of ciphertext‖tag. A wrong tag, key or AAD fails (SoftHSM returns
    /// `CKR_GENERAL_ERROR` for a tag mismatch, other tokens `CKR_ENCRYPTED_DATA_INVALID`).
    public func decryptAESGCM(key: CK_OBJECT_HANDLE, iv: [UInt8], aad: [UInt8], ciphertext: [UInt8]) throws(PKCS11Error) -> [UInt8] {
        let outCapacity = max(ciphertext.count, 1)
        return try withGCMMechanism(iv: iv, aad: aad) { (mech) throws(PKCS11Error) -> [UInt8] in
            var rv = f.C_DecryptInit(handle, mech, key)
            guard rv == CKR_OK else { throw .call("C_DecryptInit", rv) }
            var outLength = CK_ULONG(outCapacity)
            let out = [UInt8](unsafeUninitializedCapacity: outCapacity) { buffer, initialized in
                rv = ciphertext.withUnsafeBufferPointer { inBuf in
                    f.C_Decrypt(handle, UnsafeMutablePointer(mutating: inBuf.baseAddress), CK_ULONG(inBuf.count), buffer.baseAddress, &outLength)
                }
                if rv == CKR_OK {
                    initialized = min(Int(outLength), outCapacity)
                } else {
                    // Never keep partial output of a failed decryption.
                    buffer.initialize(repeating: 0)
                    initialized = 0
                }
            }
            guard rv == CKR_OK else { throw .call("C_Decrypt", rv) }
            return out
        }
    }

    private func withGCMMechanism<T>(
        iv: [UInt8], aad: [UInt8],
        _ body: (UnsafeMutablePointer<CK_MECHANISM>) throws(PKCS11Error) -> T
    ) throws(PKCS11Error) -> T {
        var iv = iv
        var aad = aad
        return try iv.withUnsafeMutableBufferPointer { (ivBuf) throws(PKCS11Error) -> T in
            try aad.withUnsafeMutableBufferPointer { (aadBuf) throws(PKCS11Error) -> T in
                // Six fields, ulIvBits set, as SoftHSM and the errata header expect (48 bytes on LP64).
                var params = CK_GCM_PARAMS(
                    pIv: ivBuf.baseAddress, ulIvLen: CK_ULONG(ivBuf.count), ulIvBits: CK_ULONG(ivBuf.count * 8),
                    pAAD: aadBuf.baseAddress, ulAADLen: CK_ULONG(aadBuf.count), ulTagBits: CK_ULONG(Session.gcmTagLength * 8))
                return try withUnsafeMutablePointer(to: &params) { (paramsPtr) throws(PKCS11Error) -> T in
                    var mech = CK_MECHANISM(
                        mechanism: CK_MECHANISM_TYPE(CKM_AES_GCM), pParameter: UnsafeMutableRawPointer(paramsPtr),
                        ulParameterLen: CK_ULONG(MemoryLayout<CK_GCM_PARAMS>.size))
                    return try withUnsafeMutablePointer(to: &mech) { (mechPtr) throws(PKCS11Error) -> T in try body(mechPtr) }
                }
            }
        }
    }
}

import CPKCS11

/// What a failed token call means to a caller that knows nothing of `CK_RV`s: the one classification of PKCS#11
/// failures for the key service.
public enum TokenFailure: Sendable, Equatable {
    /// A decryption the token refused as unauthentic: wrong tag, key or AAD (SoftHSM answers `CKR_GENERAL_ERROR`,
    /// other tokens `CKR_ENCRYPTED_DATA_INVALID` or `CKR_ENCRYPTED_DATA_LEN_RANGE`). A failing token looks the same,
    /// so callers tell them apart with a known-good operation.
    case authenticationFailed
    /// The key's usage is switched off in the token (`CKR_KEY_FUNCTION_NOT_PERMITTED`: a retired key).
    case keyDisabled
    /// The token cannot be used right now (session, login or device lost, busy, not found).
    case unavailable
    /// Anything else, with the `CK_RV` when a call failed (0 otherwise).
    case other(rv: UInt)
}

extension PKCS11Error {
    public var failure: TokenFailure {
        if case .call(let function, let rv) = kind {
            if rv == CKR_KEY_FUNCTION_NOT_PERMITTED { return .keyDisabled }
            if function.hasPrefix("C_Decrypt"),
               rv == CKR_GENERAL_ERROR || rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE {
                return .authenticationFailed
            }
        }
        if isUnavailable { return .unavailable }
        return .other(rv: rv ?? 0)
    }
}

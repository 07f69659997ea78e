import CPKCS11

/// A failed PKCS#11 call: the function that failed and its `CK_RV`, or a library-level problem
/// (module not loadable, token not found). Messages never contain PINs, plaintext or key bytes.
public struct PKCS11Error: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// A `C_*` function returned a non-OK `CK_RV`.
        case call(function: String, rv: UInt)
        /// The module could not be loaded (path, symbol).
        case moduleLoad(String)
        /// No token with the requested label is present.
        case tokenNotFound(label: String)
        /// The PIN was rejected once; the plugin never tries it again.
        case pinRejected
        /// An object or attribute was not what the caller needed.
        case object(String)
        /// Every session was in use until the caller's deadline (or the pool's wait bound): the token is busy or
        /// stuck; nothing was sent to it for this call.
        case noFreeSession(waited: Duration)
    }

    public let kind: Kind

    public init(_ kind: Kind) { self.kind = kind }

    public static func call(_ function: String, _ rv: UInt) -> PKCS11Error {
        PKCS11Error(.call(function: function, rv: rv))
    }

    /// The `CK_RV` if this error came from a call.
    public var rv: UInt? {
        if case .call(_, let rv) = kind { return rv }
        return nil
    }

    public var description: String {
        switch kind {
        case .call(let function, let rv): return "\(function) failed: \(PKCS11Error.name(of: rv))"
        case .moduleLoad(let why): return "cannot load PKCS#11 module: \(why)"
        case .tokenNotFound(let label): return "no token labelled '\(label)' is present"
        case .pinRejected: return "the token rejected the PIN (not retried)"
        case .object(let why): return why
        case .noFreeSession(let waited):
            return "no PKCS#11 session became free within \(waited.components.seconds * 1000 + waited.components.attoseconds / 1_000_000_000_000_000) ms"
        }
    }

    /// The session is gone or unusable but the token is fine: open a new session (and log in) and retry.
    /// `CKR_OPERATION_ACTIVE` is here because a session is never shared: an operation still active in it was left
    /// behind by a failed call (a token that did not end it), and the session would otherwise fail every later use.
    public var isSessionLost: Bool {
        guard let rv else { return false }
        return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED || rv == CKR_USER_NOT_LOGGED_IN
            || rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OPERATION_ACTIVE
    }

    /// The device, slot or library state is gone: only finalising and re-initialising the module can recover.
    /// A token no longer (or not yet) found by its label counts too: SoftHSM sees a token whose storage came back
    /// only after re-initialisation.
    public var isDeviceLost: Bool {
        if case .tokenNotFound = kind { return true }
        guard let rv else { return false }
        return rv == CKR_DEVICE_REMOVED || rv == CKR_DEVICE_ERROR || rv == CKR_TOKEN_NOT_PRESENT
            || rv == CKR_TOKEN_NOT_RECOGNIZED || rv == CKR_SLOT_ID_INVALID || rv == CKR_CRYPTOKI_NOT_INITIALIZED
            || rv == CKR_DEVICE_MEMORY || rv == CKR_HOST_MEMORY || rv == CKR_FUNCTION_FAILED
    }

    /// The error says the token cannot be used right now (as opposed to bad input or a bad key).
    public var isUnavailable: Bool {
        switch kind {
        case .call(_, let rv): return isSessionLost || isDeviceLost || rv == CKR_GENERAL_ERROR
            || rv == CKR_SESSION_COUNT || rv == CKR_TOKEN_NOT_PRESENT
        case .moduleLoad, .tokenNotFound, .pinRejected: return true
        case .object: return false
        case .noFreeSession: return true
        }
    }

    static let names: [UInt: String] = [
        UInt(CKR_OK): "CKR_OK", UInt(CKR_CANCEL): "CKR_CANCEL", UInt(CKR_HOST_MEMORY): "CKR_HOST_MEMORY",
        UInt(CKR_SLOT_ID_INVALID): "CKR_SLOT_ID_INVALID", UInt(CKR_GENERAL_ERROR): "CKR_GENERAL_ERROR",
        UInt(CKR_FUNCTION_FAILED): "CKR_FUNCTION_FAILED", UInt(CKR_ARGUMENTS_BAD): "CKR_ARGUMENTS_BAD",
        UInt(CKR_ATTRIBUTE_READ_ONLY): "CKR_ATTRIBUTE_READ_ONLY",
        UInt(CKR_ATTRIBUTE_SENSITIVE): "CKR_ATTRIBUTE_SENSITIVE",
        UInt(CKR_ATTRIBUTE_TYPE_INVALID): "CKR_ATTRIBUTE_TYPE_INVALID",
        UInt(CKR_ATTRIBUTE_VALUE_INVALID): "CKR_ATTRIBUTE_VALUE_INVALID",
        UInt(CKR_DATA_INVALID): "CKR_DATA_INVALID", UInt(CKR_DATA_LEN_RANGE): "CKR_DATA_LEN_RANGE",
        UInt(CKR_DEVICE_ERROR): "CKR_DEVICE_ERROR", UInt(CKR_DEVICE_MEMORY): "CKR_DEVICE_MEMORY",
        UInt(CKR_DEVICE_REMOVED): "CKR_DEVICE_REMOVED", UInt(CKR_ENCRYPTED_DATA_INVALID): "CKR_ENCRYPTED_DATA_INVALID",
        UInt(CKR_ENCRYPTED_DATA_LEN_RANGE): "CKR_ENCRYPTED_DATA_LEN_RANGE",
        UInt(CKR_FUNCTION_NOT_SUPPORTED): "CKR_FUNCTION_NOT_SUPPORTED",
        UInt(CKR_ACTION_PROHIBITED): "CKR_ACTION_PROHIBITED",
        UInt(CKR_KEY_HANDLE_INVALID): "CKR_KEY_HANDLE_INVALID",
        UInt(CKR_KEY_FUNCTION_NOT_PERMITTED): "CKR_KEY_FUNCTION_NOT_PERMITTED",
        UInt(CKR_KEY_UNEXTRACTABLE): "CKR_KEY_UNEXTRACTABLE",
        UInt(CKR_MECHANISM_INVALID): "CKR_MECHANISM_INVALID",
        UInt(CKR_MECHANISM_PARAM_INVALID): "CKR_MECHANISM_PARAM_INVALID",
        UInt(CKR_OBJECT_HANDLE_INVALID): "CKR_OBJECT_HANDLE_INVALID",
        UInt(CKR_OPERATION_ACTIVE): "CKR_OPERATION_ACTIVE",
        UInt(CKR_OPERATION_NOT_INITIALIZED): "CKR_OPERATION_NOT_INITIALIZED",
        UInt(CKR_PIN_INCORRECT): "CKR_PIN_INCORRECT", UInt(CKR_PIN_LOCKED): "CKR_PIN_LOCKED",
        UInt(CKR_PIN_EXPIRED): "CKR_PIN_EXPIRED", UInt(CKR_PIN_LEN_RANGE): "CKR_PIN_LEN_RANGE",
        UInt(CKR_SESSION_CLOSED): "CKR_SESSION_CLOSED", UInt(CKR_SESSION_COUNT): "CKR_SESSION_COUNT",
        UInt(CKR_SESSION_HANDLE_INVALID): "CKR_SESSION_HANDLE_INVALID",
        UInt(CKR_SESSION_READ_ONLY): "CKR_SESSION_READ_ONLY",
        UInt(CKR_TEMPLATE_INCOMPLETE): "CKR_TEMPLATE_INCOMPLETE",
        UInt(CKR_TEMPLATE_INCONSISTENT): "CKR_TEMPLATE_INCONSISTENT",
        UInt(CKR_TOKEN_NOT_PRESENT): "CKR_TOKEN_NOT_PRESENT", UInt(CKR_TOKEN_NOT_RECOGNIZED): "CKR_TOKEN_NOT_RECOGNIZED",
        UInt(CKR_TOKEN_WRITE_PROTECTED): "CKR_TOKEN_WRITE_PROTECTED",
        UInt(CKR_USER_ALREADY_LOGGED_IN): "CKR_USER_ALREADY_LOGGED_IN",
        UInt(CKR_USER_NOT_LOGGED_IN): "CKR_USER_NOT_LOGGED_IN",
        UInt(CKR_USER_PIN_NOT_INITIALIZED): "CKR_USER_PIN_NOT_INITIALIZED",
        UInt(CKR_USER_TYPE_INVALID): "CKR_USER_TYPE_INVALID",
        UInt(CKR_BUFFER_TOO_SMALL): "CKR_BUFFER_TOO_SMALL",
        UInt(CKR_CRYPTOKI_NOT_INITIALIZED): "CKR_CRYPTOKI_NOT_INITIALIZED",
        UInt(CKR_CRYPTOKI_ALREADY_INITIALIZED): "CKR_CRYPTOKI_ALREADY_INITIALIZED",
    ]

    public static func name(of rv: UInt) -> String {
        names[rv] ?? "CKR_0x\(String(rv, radix: 16))"
    }
}

/// An error a `Token.withSession` body may throw: made from a token error, and saying which token error (if any) is
/// behind it, which decides whether the session is dropped and the call retried.
public protocol TokenCallError: Error {
    init(tokenError: PKCS11Error)
    var tokenError: PKCS11Error? { get }
}

extension PKCS11Error: TokenCallError {
    public init(tokenError: PKCS11Error) { self = tokenError }
    public var tokenError: PKCS11Error? { self }
}

import PKCS11

/// The one error type of the key service. The server maps `code` to a gRPC status; `message` is safe to return to
/// the caller and to log: it never contains plaintext, key bytes or the PIN.
public struct KMSError: TokenCallError, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The request is malformed or cannot be authenticated: changes nothing.
        case invalidArgument
        /// The request is well formed but the key's state refuses it (e.g. a retired key).
        case failedPrecondition
        /// The token cannot be reached or used right now.
        case unavailable
        /// The call could not start on the token before its deadline (every session busy); nothing was done.
        case deadlineExceeded
        /// Anything else.
        case `internal`
    }

    public let code: Code
    public let message: String
    /// The token error behind this one, if any (it decides `Token.withSession`'s retries); not part of equality.
    public var tokenError: PKCS11Error?

    /// What the token said, for a token error.
    public var tokenFailure: TokenFailure? { tokenError?.failure }

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public static func == (lhs: KMSError, rhs: KMSError) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message
    }

    public var description: String { message }

    public static func invalid(_ message: String) -> KMSError { KMSError(.invalidArgument, message) }

    /// `KMSError.token(_:)`, for `Token.withSession` bodies that throw `KMSError`.
    public init(tokenError: PKCS11Error) { self = KMSError.token(tokenError) }

    /// Runs a token call, mapping its error with `token(_:)`.
    public static func mapping<T>(_ body: () throws(PKCS11Error) -> T) throws(KMSError) -> T {
        do throws(PKCS11Error) {
            return try body()
        } catch {
            throw KMSError.token(error)
        }
    }

    /// Maps a token error: outages become `unavailable` with the failing call's name, nothing else.
    public static func token(_ error: PKCS11Error) -> KMSError {
        var mapped: KMSError
        if case .noFreeSession = error.kind {
            mapped = KMSError(.deadlineExceeded, "not started: \(error)")
        } else if error.isUnavailable {
            mapped = KMSError(.unavailable, "token unavailable: \(error)")
        } else {
            mapped = KMSError(.internal, "token error: \(error)")
        }
        mapped.tokenError = error
        return mapped
    }
}

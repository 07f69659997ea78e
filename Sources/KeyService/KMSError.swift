import PKCS11

/// The one error type of the key service. The server maps `code` to a gRPC status; `message` is safe to return to
/// the caller and to log: it never contains plaintext, key bytes or the PIN.
public struct KMSError: Error, Sendable, Equatable, CustomStringConvertible {
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
    /// What the token said, for a token error; not part of equality.
    public var tokenFailure: TokenFailure?

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public static func == (lhs: KMSError, rhs: KMSError) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message
    }

    public var description: String { message }

    public static func invalid(_ message: String) -> KMSError { KMSError(.invalidArgument, message) }

    /// Maps a token error: outages become `unavailable` with the failing call's name, nothing else.
    public static func token(_ error: PKCS11Error) -> KMSError {
        if case .noFreeSession = error.kind {
            return KMSError(.deadlineExceeded, "not started: \(error)")
        }
        if error.isUnavailable {
            return KMSError(.unavailable, "token unavailable: \(error)")
        }
        return KMSError(.internal, "token error: \(error)")
    }
}

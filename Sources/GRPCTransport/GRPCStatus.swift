import CGRPC

/// The canonical gRPC status codes (same numbering as `grpc_status_code`).
public enum GRPCStatusCode: Int32, Sendable, CaseIterable {
    case ok = 0
    case cancelled = 1
    case unknown = 2
    case invalidArgument = 3
    case deadlineExceeded = 4
    case notFound = 5
    case alreadyExists = 6
    case permissionDenied = 7
    case resourceExhausted = 8
    case failedPrecondition = 9
    case aborted = 10
    case outOfRange = 11
    case unimplemented = 12
    case `internal` = 13
    case unavailable = 14
    case dataLoss = 15
    case unauthenticated = 16

    /// Maps a raw code received from the wire; unknown values become `.unknown`.
    init(coreValue: Int32) {
        self = GRPCStatusCode(rawValue: coreValue) ?? .unknown
    }

    var coreValue: grpc_status_code {
        grpc_status_code(rawValue: rawValue)
    }
}

/// A gRPC status: a code plus a human-readable message, sent to the peer as the status details.
///
/// This is the only error type whose message a `GRPCServer` sends to clients. Handlers throw it to
/// choose the status of a call; every other error becomes `internal` with a generic message.
public struct GRPCStatus: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: GRPCStatusCode
    public var message: String

    public init(_ code: GRPCStatusCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String {
        message.isEmpty ? "\(code)" : "\(code): \(message)"
    }
}

extension GRPCStatus {
    /// Describes a `grpc_call_error` returned synchronously by `grpc_call_start_batch` and friends.
    init(callError: grpc_call_error, operation: String) {
        let code: GRPCStatusCode
        let reason: String
        switch callError {
        case GRPC_CALL_ERROR_INVALID_METADATA:
            code = .invalidArgument
            reason = "invalid metadata (keys must be lowercase and legal header names, values printable)"
        case GRPC_CALL_ERROR_INVALID_MESSAGE:
            code = .invalidArgument
            reason = "invalid message"
        case GRPC_CALL_ERROR_ALREADY_FINISHED:
            code = .failedPrecondition
            reason = "call already finished"
        default:
            code = .internal
            reason = "gRPC core call error \(callError.rawValue)"
        }
        self.init(code, "\(operation): \(reason)")
    }
}

import GRPCTransport
import KeyService

extension GRPCStatus {
    /// The one place that maps key-service errors to gRPC codes: bad input → invalidArgument, a refused key state →
    /// failedPrecondition, token unreachable → unavailable, anything else → internal. Messages are already free of
    /// plaintext, key bytes and the PIN.
    init(_ error: KMSError) {
        switch error.code {
        case .invalidArgument: self.init(.invalidArgument, error.message)
        case .failedPrecondition: self.init(.failedPrecondition, error.message)
        case .unavailable: self.init(.unavailable, error.message)
        case .deadlineExceeded: self.init(.deadlineExceeded, error.message)
        case .internal: self.init(.internal, error.message)
        }
    }
}

import GRPCTransport

/// The one error type of the audit: the audit itself could not run (the CLI exits with status 2). `message` is
/// meant for an operator and never contains plaintext or secret bytes.
public struct AuditError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// Bad flags or unreadable files (certificates, keys).
        case configuration
        /// No etcd endpoint answered (down, wrong address, TLS handshake refused).
        case etcdUnavailable
        /// etcd answered with an error (authentication, permission, compaction, ...).
        case etcdFailed
        /// The plugin socket does not answer.
        case pluginUnavailable
        /// The plugin answered in a way the audit cannot interpret.
        case pluginFailed
    }

    public let code: Code
    public let message: String
    /// The gRPC status behind the error, when there is one.
    public let status: GRPCStatus?

    public init(_ code: Code, _ message: String, status: GRPCStatus? = nil) {
        self.code = code
        self.message = message
        self.status = status
    }

    public var description: String { message }
}

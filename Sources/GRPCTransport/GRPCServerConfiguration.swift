import CGRPC
import Logging

/// What a unary handler learns about its call.
public struct ServerCallContext: Sendable {
    /// The full method path, e.g. "/v2.KeyManagementService/Status".
    public let method: String
    /// The client's custom initial metadata (may also contain "user-agent").
    public let metadata: [(key: String, value: String)]
    /// When the client stops waiting, or nil if it set no deadline.
    public let deadline: ContinuousClock.Instant?

    public init(method: String, metadata: [(key: String, value: String)], deadline: ContinuousClock.Instant?) {
        self.method = method
        self.metadata = metadata
        self.deadline = deadline
    }

    /// The first value for `key` (compared case-insensitively; gRPC keys are lowercase).
    public func metadataValue(for key: String) -> String? {
        let lowered = key.lowercased()
        return metadata.first { $0.key == lowered }?.value
    }
}

/// A unary handler: request bytes in, response bytes out, or a thrown `GRPCStatus`.
///
/// Any other thrown error becomes status `internal` with a generic message: error text is never sent
/// to the client because it might contain secrets. Handlers run on the server's own threads (never
/// Swift's cooperative pool) and may block; they should respect `context.deadline`.
public typealias UnaryHandler = @Sendable (_ request: [UInt8], _ context: ServerCallContext) throws -> [UInt8]

/// TLS for a server listening on TCP (the KMS socket itself is a unix socket and stays plaintext).
public struct GRPCServerTLS: Sendable {
    public var certificateChainPEM: String
    public var privateKeyPEM: String
    /// When set, clients must present a certificate issued by one of these CAs.
    public var clientCARootsPEM: String?

    public init(certificateChainPEM: String, privateKeyPEM: String, clientCARootsPEM: String? = nil) {
        self.certificateChainPEM = certificateChainPEM
        self.privateKeyPEM = privateKeyPEM
        self.clientCARootsPEM = clientCARootsPEM
    }
}

public struct GRPCServerConfiguration: Sendable {
    /// Where to listen: "unix:/run/kms.sock", "unix:///run/kms.sock", an absolute path, or a TCP
    /// "host:port" ("127.0.0.1:0" picks a free port, see `GRPCServer.boundPort`).
    ///
    /// The server applies no socket-file policy: the gRPC core silently unlinks an existing file at a
    /// unix path, even one a live server listens on, so the caller must check for a live server
    /// first. It also does not change the socket's permissions.
    public var address: String
    /// Completion-queue threads; one is fastest on small machines.
    public var completionQueueThreads: Int = 1
    /// Threads running handlers; 0 runs handlers inline on the completion-queue thread.
    public var workerThreads: Int = 4
    /// On shutdown (as a `Service`), how long in-flight calls may take to finish before they are cancelled.
    public var shutdownGrace: Duration = .seconds(5)
    /// Calls that may wait for a worker; beyond it new calls fail at once with `resourceExhausted`.
    public var maxQueuedCalls: Int = 1024
    /// Methods whose handlers run on the completion-queue thread, never queued behind worker calls. Their handlers
    /// must not block (e.g. a health check that reads cached state).
    public var inlineMethods: Set<String> = []
    /// Why a call was answered without running its handler.
    public enum Refusal: Sendable {
        /// `maxQueuedCalls` calls were already waiting (answered `resourceExhausted`).
        case queueFull
        /// Its deadline passed before a worker could start it (answered `deadlineExceeded`).
        case deadlineExpired
    }
    public typealias RefusalObserver = @Sendable (_ method: String, _ refusal: Refusal) -> Void
    /// Told about every refused call (from server threads; keep it cheap).
    public var refusalObserver: RefusalObserver?
    /// Largest request message accepted, in bytes (larger ones fail with `resourceExhausted`).
    public var maxReceiveMessageSize: Int = 4 * 1024 * 1024
    /// How many `grpc_server_request_*call` are kept outstanding per completion queue and method.
    public var pendingCallsPerQueue: Int = 32
    /// TLS instead of plaintext (default nil: plaintext).
    public var tls: GRPCServerTLS?
    /// Where the server reports handler failures (error types only, never error text).
    public var logger: Logger = Logger(label: "grpc.server")

    public init(address: String) {
        self.address = address
    }
}

extension GRPCServerConfiguration {
    /// The address in the form the core accepts ("unix:/abs/path" or "host:port").
    var coreAddress: String {
        if address.hasPrefix("unix://") {
            return "unix:" + address.dropFirst("unix://".count)
        }
        if address.hasPrefix("/") {
            return "unix:" + address
        }
        return address
    }

    /// The socket path for unix addresses, nil for TCP.
    var unixPath: String? {
        let core = coreAddress
        guard core.hasPrefix("unix:") else { return nil }
        return String(core.dropFirst("unix:".count))
    }

    /// Creates the listener's credentials; the caller releases them.
    func makeCredentials() -> OpaquePointer? {
        guard let tls else { return grpc_insecure_server_credentials_create() }
        return tls.privateKeyPEM.withCString { key -> OpaquePointer? in
            tls.certificateChainPEM.withCString { chain -> OpaquePointer? in
                var pair = grpc_ssl_pem_key_cert_pair(private_key: key, cert_chain: chain)
                guard let roots = tls.clientCARootsPEM else {
                    return grpc_ssl_server_credentials_create_ex(nil, &pair, 1, GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE, nil)
                }
                return roots.withCString { roots -> OpaquePointer? in
                    grpc_ssl_server_credentials_create_ex(
                        roots, &pair, 1, GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY, nil)
                }
            }
        }
    }

    func validate(methods: some Sequence<String>) throws(GRPCStatus) {
        for method in methods where !method.hasPrefix("/") {
            throw GRPCStatus(.invalidArgument, "method paths must start with '/': \(method)")
        }
        guard completionQueueThreads >= 1 else {
            throw GRPCStatus(.invalidArgument, "completionQueueThreads must be at least 1")
        }
        guard workerThreads >= 0 else { throw GRPCStatus(.invalidArgument, "workerThreads must not be negative") }
        guard maxQueuedCalls >= 1 else { throw GRPCStatus(.invalidArgument, "maxQueuedCalls must be at least 1") }
        guard pendingCallsPerQueue >= 1 else {
            throw GRPCStatus(.invalidArgument, "pendingCallsPerQueue must be at least 1")
        }
        guard maxReceiveMessageSize >= -1, maxReceiveMessageSize <= Int(Int32.max) else {
            throw GRPCStatus(.invalidArgument, "maxReceiveMessageSize must be -1 (unlimited) or fit in 31 bits")
        }
        if let path = unixPath {
            guard path.hasPrefix("/") else {
                throw GRPCStatus(.invalidArgument, "unix socket path must be absolute: \(address)")
            }
            // sun_path holds 108 bytes including the terminating NUL.
            guard path.utf8.count <= 107 else {
                throw GRPCStatus(.invalidArgument, "unix socket path is longer than 107 bytes: \(path)")
            }
        } else if address.isEmpty {
            throw GRPCStatus(.invalidArgument, "empty listen address")
        }
    }
}

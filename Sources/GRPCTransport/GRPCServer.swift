import CGRPC
import Lifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A unary-only gRPC server on the gRPC C core.
///
/// Completion-queue threads and handler worker threads are the server's own POSIX threads, never
/// Swift's cooperative pool. A server is started once and shut down once; create a new instance to
/// listen again.
public final class GRPCServer: Service {
    public var name: String { "grpc \(configuration.address)" }
    public let configuration: GRPCServerConfiguration
    private let handlers: [String: UnaryHandler]
    let state = Mutex(State.idle)
    let counters = ServerCounters()

    enum State {
        case idle
        case running(Running)
        case stopped
        /// Shut down past its deadline with handlers still running: threads and core objects left behind.
        case abandoned
    }

    struct Running {
        let runtime: ServerRuntime
        let queueThreads: [ServiceThread]
        let boundPort: Int
    }

    /// - Parameter handlers: keyed by full method path, e.g. "/v2.KeyManagementService/Status".
    ///   Calls to other methods fail with `unimplemented`.
    public init(configuration: GRPCServerConfiguration, handlers: [String: UnaryHandler]) {
        self.configuration = configuration
        self.handlers = handlers
    }

    deinit {
        shutdown(gracePeriod: .zero)
    }

    /// Calls accepted and not yet finished.
    public var inFlightCalls: Int {
        counters.inFlight.load(ordering: .relaxed)
    }

    /// Calls waiting for a worker thread (0 when handlers run inline or the server is stopped).
    public var queuedCalls: Int { runningWorkers?.depth ?? 0 }

    /// Worker threads inside a handler now.
    public var busyWorkers: Int { runningWorkers?.busyWorkers ?? 0 }

    private var runningWorkers: WorkerPool? {
        state.withLock { state in
            if case .running(let running) = state { return running.runtime.workers }
            return nil
        }
    }

    /// The port the server listens on (TCP), or nil if it is not running. Unix sockets report 1.
    public var boundPort: Int? {
        state.withLock { state in
            if case .running(let running) = state { return running.boundPort }
            return nil
        }
    }

    /// Binds the address and starts serving.
    ///
    /// The gRPC core removes an existing file at a unix socket path before binding, even if a live
    /// server is listening there; checking for that is the caller's job, as is setting permissions.
    public func start() throws(ServiceError) {
        do throws(GRPCStatus) {
            try startServing()
        } catch {
            throw ServiceError(error.message)
        }
    }

    /// As `start()`, with the gRPC status of a failure.
    public func startServing() throws(GRPCStatus) {
        try configuration.validate(methods: handlers.keys)
        try state.withLock { (state: inout State) throws(GRPCStatus) -> Void in
            switch state {
            case .idle: break
            case .running: throw GRPCStatus(.failedPrecondition, "the server is already running")
            case .stopped, .abandoned: throw GRPCStatus(.failedPrecondition, "the server has been shut down; create a new one")
            }
            state = .running(try GRPCRuntime.withSignalsBlocked { () throws(GRPCStatus) in try launch() })
        }
    }

    private func launch() throws(GRPCStatus) -> Running {
        GRPCRuntime.retain()
        var arguments = ChannelArguments()
        arguments.set(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, Int32(configuration.maxReceiveMessageSize))
        // The core enables SO_REUSEPORT by default, which lets a second server bind a busy TCP port.
        arguments.set(GRPC_ARG_ALLOW_REUSEPORT, 0)
        let server = arguments.withUnsafeArguments { grpc_server_create($0, nil)! }

        let queues = (0..<configuration.completionQueueThreads).map { _ in
            let queue = grpc_completion_queue_create_for_next(nil)!
            grpc_server_register_completion_queue(server, queue, nil)
            return CHandle(queue)
        }
        var methods: [ServerRuntime.Method] = []
        var methodNames: [CHandle] = []
        for (name, handler) in handlers.sorted(by: { $0.key < $1.key }) {
            let cName = strdup(name)!
            methodNames.append(CHandle(UnsafeMutableRawPointer(cName)))
            guard let handle = grpc_server_register_method(
                server, cName, nil, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0)
            else {
                Self.abandon(server: server, queues: queues, names: methodNames)
                throw GRPCStatus(.invalidArgument, "the gRPC core refused to register method \(name)")
            }
            methods.append(ServerRuntime.Method(
                name: name, handle: CHandle(handle), handler: handler, inline: configuration.inlineMethods.contains(name)))
        }

        guard let credentials = configuration.makeCredentials() else {
            Self.abandon(server: server, queues: queues, names: methodNames)
            throw GRPCStatus(.invalidArgument, "the gRPC core could not create the server's TLS credentials")
        }
        let port = grpc_server_add_http2_port(server, configuration.coreAddress, credentials)
        grpc_server_credentials_release(credentials)
        guard port != 0 else {
            Self.abandon(server: server, queues: queues, names: methodNames)
            throw GRPCStatus(.unavailable, bindFailureMessage())
        }
        grpc_server_start(server)

        let workers = configuration.workerThreads > 0
            ? WorkerPool(threadCount: configuration.workerThreads, limit: configuration.maxQueuedCalls, name: "grpc-worker") : nil
        let runtime = ServerRuntime(
            server: CHandle(server), queues: queues, methods: methods, methodNames: methodNames,
            workers: workers, counters: counters, logger: configuration.logger,
            pendingPerQueue: configuration.pendingCallsPerQueue, observer: configuration.refusalObserver)
        runtime.postInitialRequests()
        let threads = queues.indices.map { index in
            ServiceThread.start(name: "grpc-cq-\(index)") { runtime.runQueue(index) }
        }
        return Running(runtime: runtime, queueThreads: threads, boundPort: Int(port))
    }

    /// Tears down a server that never started (no listener was added).
    private static func abandon(server: OpaquePointer, queues: [CHandle], names: [CHandle]) {
        grpc_server_destroy(server)
        for queue in queues {
            grpc_completion_queue_shutdown(queue.pointer)
            while grpc_completion_queue_next(queue.pointer, gpr_inf_future(GPR_CLOCK_REALTIME), nil).type
                != GRPC_QUEUE_SHUTDOWN {}
            grpc_completion_queue_destroy(queue.pointer)
        }
        for name in names { free(name.raw) }
        GRPCRuntime.release()
    }

    /// `grpc_server_add_http2_port` only logs why it failed; guess the usual causes.
    private func bindFailureMessage() -> String {
        let prefix = "could not listen on \(configuration.address)"
        guard let path = configuration.unixPath else {
            let tlsHint = configuration.tls == nil ? "" : ", or the TLS certificate and key are unusable"
            return "\(prefix): the address is invalid or the port is in use\(tlsHint)"
        }
        var directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        if directory.isEmpty { directory = "/" }
        var info = stat()
        if stat(directory, &info) != 0 || (info.st_mode & S_IFMT) != S_IFDIR {
            return "\(prefix): directory \(directory) does not exist"
        }
        if access(directory, W_OK | X_OK) != 0 {
            return "\(prefix): directory \(directory) is not writable"
        }
        return "\(prefix): the socket could not be created (see the gRPC core log)"
    }
}

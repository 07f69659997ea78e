import GRPCTransport
import KeyService
import Lifecycle
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// How the plugin serves.
public struct PluginConfiguration: Sendable {
    public var listen: SocketAddress
    /// Mode of the socket file; nil means 0600 (only the apiserver's user may connect).
    public var socketMode: mode_t?
    public var socketGroup: String?
    /// Abstract sockets (`unix:///@name`) have no file, hence no mode or group: any local process in the network
    /// namespace may connect. They are served only when this is set.
    public var allowAbstractSocket = false
    public var statusVersion: KMSv2Service.StatusVersion = .v2
    /// Serve KMS v1 (`v1beta1`) on the same socket.
    public var enableV1 = true
    public var completionQueueThreads = 1
    /// Threads that run requests (PKCS#11 calls block; they never run on Swift's cooperative pool).
    public var workerThreads = 4
    /// Encrypt/Decrypt calls that may wait for a worker; beyond it they fail at once with `resourceExhausted`.
    public var maxQueuedCalls = 1024
    /// How long in-flight calls may take to finish on shutdown; the process exits at most 1 s later in any case.
    public var shutdownGrace: Duration = .seconds(5)
    /// Where `/healthz`, `/livez`, `/readyz` and `/metrics` are served; nil turns the HTTP listener off.
    public var httpListen: (host: String, port: Int)? = ("127.0.0.1", 8787)
    /// Token probe: key-list refresh, canary round trip, and the age after which health is stale.
    public var probeInterval: Duration = .seconds(2)
    public var canaryInterval: Duration = .seconds(10)
    public var staleAfter: Duration?

    public init(listen: SocketAddress) {
        self.listen = listen
    }

    /// The socket rules that do not need the file system.
    public func validate() throws(ServeError) {
        if listen.isAbstract {
            guard allowAbstractSocket else {
                throw ServeError("\(listen) is an abstract socket, which any local process may connect to (no file, no "
                    + "permissions); use a socket path, or pass --allow-abstract-socket to accept that")
            }
            guard socketMode == nil, socketGroup == nil else {
                throw ServeError("--socket-mode and --socket-group cannot apply to an abstract socket (it has no file)")
            }
        }
    }
}

/// The KMS plugin: the token probe, the HTTP endpoint and the gRPC server on its socket, started in that order by
/// one service group (the socket is bound only after the first probe) and stopped in reverse order within
/// `shutdownGrace` + 1 s.
public final class PluginServer: Sendable {
    public let configuration: PluginConfiguration
    public let health: HealthMonitor
    public let serving: ServingMetrics
    private let server: GRPCServer
    private let handlers: [String: UnaryHandler]
    private let http: HTTPEndpoint?
    private let group: ServiceGroup
    private let logger: Logger

    /// `metricsText` renders the metrics in Prometheus text format (the executable owns the registry).
    public init(configuration: PluginConfiguration, service: EnvelopeService, metrics: KMSMetrics, logger: Logger,
                runtimeVersion: String, metricsText: (@Sendable () -> [UInt8])? = nil) {
        self.configuration = configuration
        self.logger = logger
        let health = HealthMonitor(service: service, refreshInterval: configuration.probeInterval,
                                   canaryInterval: configuration.canaryInterval, staleAfter: configuration.staleAfter)
        self.health = health
        let serving = ServingMetrics()
        self.serving = serving
        let pipeline = UnaryPipeline(metrics: metrics, serving: serving, health: health, logger: logger)
        var handlers = KMSv2Service(service: service, statusVersion: configuration.statusVersion, pipeline: pipeline).handlers
        var inline = KMSv2Service.inlineMethods
        if configuration.enableV1 {
            handlers.merge(KMSv1Service(service: service, runtimeVersion: runtimeVersion, pipeline: pipeline).handlers) { a, _ in a }
            inline.formUnion(KMSv1Service.inlineMethods)
        }
        var grpc = GRPCServerConfiguration(address: configuration.listen.grpcAddress)
        grpc.completionQueueThreads = configuration.completionQueueThreads
        grpc.workerThreads = configuration.workerThreads
        grpc.maxQueuedCalls = configuration.maxQueuedCalls
        grpc.inlineMethods = inline
        grpc.shutdownGrace = configuration.shutdownGrace
        grpc.refusalObserver = { method, refusal in serving.refused(path: method, refusal) }
        grpc.logger = logger
        let server = GRPCServer(configuration: grpc, handlers: handlers)
        self.server = server
        self.handlers = handlers
        if let listen = configuration.httpListen {
            let token = service.token
            let ring = service.keyRing
            @Sendable func healthResponse() -> HTTPEndpoint.Response {
                let current = health.health
                return current.healthy
                    ? .init(status: 200, body: "ok\n")
                    : .init(status: 503, body: "unhealthy: \(current.reason)\n")
            }
            var routes: [String: HTTPEndpoint.Route] = [
                // Alive while the process can serve Status: a token outage or hang is not a reason to restart it.
                "/livez": { .init(status: 200, body: "ok\n") },
                "/readyz": { healthResponse() },
                "/healthz": { healthResponse() },
            ]
            if let metricsText {
                let capacity = configuration.workerThreads > 0 ? configuration.maxQueuedCalls : 0
                routes["/metrics"] = {
                    metrics.updateGauges(health: health.health, token: token, keys: ring.keys, invalidKeys: ring.invalidKeys.count,
                                         inFlightCalls: server.inFlightCalls)
                    serving.update(queued: server.queuedCalls, capacity: capacity, lastSuccessAge: health.lastSuccessAge)
                    return .init(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: metricsText())
                }
            }
            http = HTTPEndpoint(host: listen.host, port: listen.port, routes: routes)
        } else {
            http = nil
        }
        let socket = KMSSocket(address: configuration.listen, server: server, mode: configuration.socketMode ?? 0o600,
                               group: configuration.socketGroup)
        group = ServiceGroup([health] + (http.map { [$0] } ?? []) + [socket])
        health.onProbe { current in metrics.recordProbe(current) }
    }

    /// Runs one call through the same pipeline as the socket, in this process (tests, benchmarks): `method` is the
    /// full gRPC path, e.g. "/v2.KeyManagementService/Encrypt". Blocks on the token: call it from a thread of your own.
    public func call(_ method: String, _ request: [UInt8], deadline: ContinuousClock.Instant? = nil) throws(GRPCStatus) -> [UInt8] {
        guard let handler = handlers[method] else { throw GRPCStatus(.unimplemented, "unknown method \(method)") }
        do {
            return try handler(request, ServerCallContext(method: method, metadata: [], deadline: deadline))
        } catch let status as GRPCStatus {
            throw status
        } catch {
            throw GRPCStatus(.internal, "internal error")
        }
    }

    /// The bound HTTP port (after `start`), when the listener is on.
    public var httpPort: Int? { http?.listeningPort }

    /// Starts the probe (and waits for its first answer), the HTTP endpoint and the socket, in that order; a failure
    /// stops what was started and leaves no socket file.
    public func start() throws(ServeError) {
        try configuration.validate()
        do throws(ServiceError) {
            try group.start()
        } catch {
            throw ServeError(error.description)
        }
        // systemd (Type=notify): READY=1 once the socket is bound and a probe has passed.
        SystemdNotifier.notifyReadyWhenHealthy(health)
        let mode = configuration.listen.isAbstract ? "none (abstract)" : String(configuration.socketMode ?? 0o600, radix: 8)
        logger.info("serving", metadata: [
            "http": "\(configuration.httpListen.map { "\($0.host):\(httpPort ?? $0.port)" } ?? "off")",
            "listen": "\(configuration.listen)",
            "socket_mode": "\(mode)",
            "status_version": "\(configuration.statusVersion.rawValue)",
            "kms_v1": "\(configuration.enableV1)",
            "max_queued_calls": "\(configuration.maxQueuedCalls)",
            "health_stale_after_seconds": "\(health.staleAfter.components.seconds)",
        ])
    }

    /// Stops accepting calls, lets in-flight calls finish within `shutdownGrace`, stops the probe and removes the
    /// socket, all within `shutdownGrace` + 1 s. Returns false when something (a call or probe inside a hung
    /// token) was still running then: the caller should exit the process without waiting for it. Idempotent.
    @discardableResult
    public func shutdown() -> Bool {
        _ = SystemdNotifier.notify("STOPPING=1")
        let deadline = ContinuousClock.now.advanced(by: configuration.shutdownGrace + .milliseconds(500))
        let leftBehind = group.shutdown(deadline: deadline)
        if leftBehind.isEmpty {
            logger.info("stopped", metadata: ["listen": "\(configuration.listen)"])
        } else {
            logger.warning("stopped with work still inside the token", metadata: [
                "listen": "\(configuration.listen)", "not_stopped": "\(leftBehind.joined(separator: ", "))",
            ])
        }
        return leftBehind.isEmpty
    }
}

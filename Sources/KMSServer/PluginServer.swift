import GRPCTransport
import KeyService
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// How the plugin serves.
public struct PluginConfiguration: Sendable {
    public var listen: SocketAddress
    /// Mode of the socket file; 0600 by default (only the apiserver's user may connect).
    public var socketMode: mode_t = 0o600
    public var socketGroup: String?
    public var statusVersion: KMSv2Service.StatusVersion = .v2
    /// Serve KMS v1 (`v1beta1`) on the same socket.
    public var enableV1 = true
    public var completionQueueThreads = 1
    /// Threads that run requests (PKCS#11 calls block; they never run on Swift's cooperative pool).
    public var workerThreads = 4
    /// How long in-flight calls may take to finish on shutdown.
    public var shutdownGrace: Duration = .seconds(5)
    /// Where `/healthz`, `/livez`, `/readyz` and `/metrics` are served; nil turns the HTTP listener off.
    public var httpListen: (host: String, port: Int)? = ("127.0.0.1", 8787)

    public init(listen: SocketAddress) {
        self.listen = listen
    }
}

/// The KMS plugin on its socket: the gRPC server with the v2 (and v1) services, the socket policy and the health
/// monitor, started and stopped together.
public final class PluginServer: Sendable {
    public let configuration: PluginConfiguration
    public let health: HealthMonitor
    private let server: GRPCServer
    private let http: HTTPEndpoint?
    private let logger: Logger
    private let state = Mutex<(started: Bool, stopped: Bool, inode: ino_t?, httpPort: Int?)>((false, false, nil, nil))

    /// `metricsText` renders the metrics in Prometheus text format (the executable owns the registry).
    public init(configuration: PluginConfiguration, service: EnvelopeService, health: HealthMonitor,
                metrics: KMSMetrics, logger: Logger, runtimeVersion: String,
                metricsText: (@Sendable () -> [UInt8])? = nil) {
        self.configuration = configuration
        self.health = health
        self.logger = logger
        var handlers = KMSv2Service(service: service, health: health, statusVersion: configuration.statusVersion,
                                    logger: logger, metrics: metrics).handlers
        if configuration.enableV1 {
            handlers.merge(KMSv1Service(service: service, health: health, runtimeVersion: runtimeVersion,
                                        logger: logger, metrics: metrics).handlers) { a, _ in a }
        }
        var grpc = GRPCServerConfiguration(address: configuration.listen.grpcAddress)
        grpc.completionQueueThreads = configuration.completionQueueThreads
        grpc.workerThreads = configuration.workerThreads
        grpc.logger = logger
        let server = GRPCServer(configuration: grpc, handlers: handlers)
        self.server = server
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
                // Alive while the process serves: a token outage is not a reason for the kubelet to restart it.
                "/livez": { .init(status: 200, body: "ok\n") },
                "/readyz": { healthResponse() },
                "/healthz": { healthResponse() },
            ]
            if let metricsText {
                routes["/metrics"] = {
                    metrics.updateGauges(health: health.health, token: token, keys: ring.keys, inFlightCalls: server.inFlightCalls)
                    return .init(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: metricsText())
                }
            }
            http = HTTPEndpoint(host: listen.host, port: listen.port, routes: routes)
        } else {
            http = nil
        }
        health.onChange { current, _ in metrics.recordProbe(current) }
    }

    /// The bound HTTP port (after `start`), when the listener is on.
    public var httpPort: Int? { state.withLock { $0.httpPort } }

    /// Checks the socket path, binds with a restrictive umask, applies the configured mode and starts the health
    /// probe.
    public func start() throws(ServeError) {
        try SocketPolicy.prepare(configuration.listen)
        let httpPort = try http?.start()
        state.withLock { $0.httpPort = httpPort }
        // No window in which the socket exists with a looser mode than configured.
        let previous = umask(0o177)
        do throws(GRPCStatus) {
            try server.start()
        } catch {
            umask(previous)
            http?.shutdown()
            throw ServeError("cannot listen on \(configuration.listen): \(error.message)")
        }
        umask(previous)
        let inode = SocketPolicy.inode(configuration.listen)
        do throws(ServeError) {
            try SocketPolicy.applyPermissions(configuration.listen, mode: configuration.socketMode, group: configuration.socketGroup)
        } catch {
            // Leave nothing behind: no server, no socket file.
            server.shutdown(gracePeriod: .zero)
            http?.shutdown()
            SocketPolicy.remove(configuration.listen, inode: inode)
            throw error
        }
        state.withLock { $0.started = true; $0.inode = inode }
        health.start()
        logger.info("serving", metadata: [
            "http": "\(configuration.httpListen.map { "\($0.host):\(httpPort ?? $0.port)" } ?? "off")",
            "listen": "\(configuration.listen)",
            "socket_mode": "\(String(configuration.socketMode, radix: 8))",
            "status_version": "\(configuration.statusVersion.rawValue)",
            "kms_v1": "\(configuration.enableV1)",
        ])
    }

    /// Stops accepting calls, lets in-flight calls finish (bounded by `shutdownGrace`), stops the probe and
    /// removes the socket. Idempotent.
    public func shutdown() {
        let (run, inode) = state.withLock { s -> (Bool, ino_t?) in
            let run = s.started && !s.stopped
            s.stopped = true
            return (run, s.inode)
        }
        guard run else { return }
        server.shutdown(gracePeriod: configuration.shutdownGrace)
        health.stop()
        http?.shutdown()
        SocketPolicy.remove(configuration.listen, inode: inode)
        logger.info("stopped", metadata: ["listen": "\(configuration.listen)"])
    }
}

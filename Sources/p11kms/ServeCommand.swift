import ArgumentParser
import Foundation
import KMSServer
import KeyService
import Logging
import PKCS11

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve KMS v2 (and v1) on a unix socket with the root keys of a PKCS#11 token.")

    @Option(help: ArgumentHelp("Socket to serve on, e.g. unix:///var/run/kms/p11kms.sock (env P11KMS_LISTEN).", valueName: "address"))
    var listen: String?

    @OptionGroup var token: TokenOptions

    @Option(help: ArgumentHelp("Mode of the socket file, octal (env P11KMS_SOCKET_MODE; default 0600).", valueName: "mode"))
    var socketMode: String?

    @Option(help: ArgumentHelp("Group to own the socket file (env P11KMS_SOCKET_GROUP).", valueName: "group"))
    var socketGroup: String?

    @Option(help: ArgumentHelp("Version reported by Status: v2, or v2beta1 for kube-apiserver 1.27-1.28 (env P11KMS_STATUS_VERSION).", valueName: "version"))
    var statusVersion: String?

    @Flag(help: "Do not serve KMS v1 (v1beta1) on the socket.")
    var disableV1 = false

    @Option(help: ArgumentHelp("Threads that run requests (env P11KMS_WORKER_THREADS; default 4).", valueName: "n"))
    var workerThreads: Int?

    @Option(help: ArgumentHelp("gRPC completion-queue threads (env P11KMS_CQ_THREADS; default 1).", valueName: "n"))
    var completionQueueThreads: Int?

    @Option(help: ArgumentHelp("Log format: text or json (env P11KMS_LOG_FORMAT).", valueName: "format"))
    var logFormat: String?

    @Option(help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error, critical (env P11KMS_LOG_LEVEL).", valueName: "level"))
    var logLevel: String?

    func run() throws {
        // Signals are blocked before any thread exists, so every thread inherits the mask and only the sigwait
        // below receives SIGTERM/SIGINT: they are handled once, in one place.
        Signals.blockTermination()
        let env = ProcessInfo.processInfo.environment
        let logger = try makeLogger(env)
        let tokenConfiguration = try token.resolved()
        var configuration = PluginConfiguration(listen: try SocketAddress(listen: listen ?? env["P11KMS_LISTEN"] ?? "unix:///var/run/kms/p11kms.sock"))
        if let mode = socketMode ?? env["P11KMS_SOCKET_MODE"] {
            guard let parsed = mode_t(mode, radix: 8), parsed <= 0o777 else { throw ValidationError("--socket-mode must be octal, e.g. 0660") }
            configuration.socketMode = parsed
        }
        configuration.socketGroup = socketGroup ?? env["P11KMS_SOCKET_GROUP"]
        if let version = statusVersion ?? env["P11KMS_STATUS_VERSION"] {
            guard let parsed = KMSv2Service.StatusVersion(rawValue: version) else { throw ValidationError("--status-version must be v2 or v2beta1") }
            configuration.statusVersion = parsed
        }
        configuration.enableV1 = !disableV1
        configuration.workerThreads = workerThreads ?? env["P11KMS_WORKER_THREADS"].flatMap(Int.init) ?? 4
        configuration.completionQueueThreads = completionQueueThreads ?? env["P11KMS_CQ_THREADS"].flatMap(Int.init) ?? 1

        let tokenHandle = Token(configuration: tokenConfiguration)
        do {
            try tokenHandle.connect()
        } catch {
            fail("cannot open the token (\(tokenConfiguration.modulePath), label \(tokenConfiguration.tokenLabel)): \(error)")
        }
        let ring = KeyRing(token: tokenHandle)
        do {
            try ring.refresh()
        } catch {
            fail("cannot read the root keys: \(error)")
        }
        guard let current = ring.current else {
            fail("the token has no current root key; run 'p11kms init' first")
        }
        let service = EnvelopeService(keyRing: ring)
        let health = HealthMonitor(service: service)
        let metrics = KMSMetrics()
        health.onChange { health, keyChanged in
            if keyChanged, let key = health.currentKeyID { logger.info("key ring changed", metadata: ["current_key_id": "\(key)"]) }
        }
        let server = PluginServer(configuration: configuration, service: service, health: health, metrics: metrics,
                                  logger: logger, runtimeVersion: P11KMS.version)
        do {
            try server.start()
        } catch {
            fail(error.description)
        }
        logger.info("root key", metadata: ["current_key_id": "\(current.keyID)", "token": "\(tokenConfiguration.tokenLabel)"])
        let signal = Signals.waitForTermination()
        logger.info("shutting down", metadata: ["signal": "\(signal)"])
        server.shutdown()
    }

    private func makeLogger(_ env: [String: String]) throws -> Logger {
        guard let format = LineLogHandler.Format(rawValue: logFormat ?? env["P11KMS_LOG_FORMAT"] ?? "text") else {
            throw ValidationError("--log-format must be text or json")
        }
        guard let level = Logger.Level(rawValue: logLevel ?? env["P11KMS_LOG_LEVEL"] ?? "info") else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        LoggingSystem.bootstrap { label in LineLogHandler(label: label, format: format, level: level) }
        return Logger(label: "p11kms")
    }
}

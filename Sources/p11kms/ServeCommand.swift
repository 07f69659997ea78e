import ArgumentParser
import ConfigFile
import Foundation
import GRPCTransport
import KMSServer
import KeyService
import Logging
import Metrics
import PKCS11
import Prometheus
import Synchronization

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve KMS v2 (and v1) on a unix socket with the root keys of a PKCS#11 token.",
        discussion: """
        Every option can also come from its environment twin or the config file (--config), in that precedence:
        flag > environment > file > default. --print-config shows the effective settings and where each came from.
        """)

    @Option(help: ArgumentHelp("Socket to serve on, e.g. unix:///var/run/kms/p11kms.sock (env P11KMS_LISTEN).", valueName: "address"))
    var listen: String?

    @OptionGroup var token: TokenOptions

    @Option(help: ArgumentHelp("Mode of the socket file, octal (env P11KMS_SOCKET_MODE; default 0600).", valueName: "mode"))
    var socketMode: String?

    @Option(help: ArgumentHelp("Group to own the socket file (env P11KMS_SOCKET_GROUP).", valueName: "group"))
    var socketGroup: String?

    @Option(help: ArgumentHelp("Version reported by Status: v2, or v2beta1 for kube-apiserver 1.27-1.28 (env P11KMS_STATUS_VERSION).", valueName: "version"))
    var statusVersion: String?

    @Flag(help: "Do not serve KMS v1 (v1beta1) on the socket (env P11KMS_DISABLE_V1).")
    var disableV1 = false

    @Option(help: ArgumentHelp("HOST:PORT for /healthz, /livez, /readyz and /metrics, or 'off' (env P11KMS_HTTP_LISTEN; default 127.0.0.1:8787).", valueName: "address"))
    var httpListen: String?

    @Option(help: ArgumentHelp("Threads that run requests; 0 runs them on the gRPC thread (env P11KMS_WORKER_THREADS; default 4).", valueName: "n"))
    var workerThreads: String?

    @Option(help: ArgumentHelp("gRPC completion-queue threads (env P11KMS_CQ_THREADS; default 1).", valueName: "n"))
    var completionQueueThreads: String?

    @Option(help: ArgumentHelp("Log format: text or json (env P11KMS_LOG_FORMAT).", valueName: "format"))
    var logFormat: String?

    @Option(help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error, critical (env P11KMS_LOG_LEVEL).", valueName: "level"))
    var logLevel: String?

    @Option(help: ArgumentHelp("Seconds in-flight calls may take to finish on SIGTERM/SIGINT (env P11KMS_SHUTDOWN_GRACE; default 5).", valueName: "seconds"))
    var shutdownGrace: String?

    @Option(help: ArgumentHelp("Seconds between token probes and key-list refreshes (env P11KMS_PROBE_INTERVAL; default 2).", valueName: "seconds"))
    var probeInterval: String?

    @Option(help: ArgumentHelp("Seconds between canary AES-GCM round trips (env P11KMS_CANARY_INTERVAL; default 10).", valueName: "seconds"))
    var canaryInterval: String?

    @Option(help: ArgumentHelp("Seconds without a good probe after which health is unhealthy ('token not answering') (env P11KMS_HEALTH_STALE_AFTER; default 3 x probe interval, at most 10).", valueName: "seconds"))
    var healthStaleAfter: String?

    @Option(help: ArgumentHelp("Encrypt/Decrypt calls that may wait for a worker; more fail at once with RESOURCE_EXHAUSTED (env P11KMS_MAX_QUEUED_CALLS; default 1024).", valueName: "n"))
    var maxQueuedCalls: String?

    @Option(help: ArgumentHelp("Run AES-GCM with session-object copies of the root keys, made once and dropped when a key is retired: about 3x the token-object rate on SoftHSM; false uses the token objects only (env P11KMS_SESSION_KEY_COPIES; default true).", valueName: "true|false"))
    var sessionKeyCopies: String?

    @Flag(help: "Allow an abstract socket (unix:///@name), which has no file and no permissions: any local process in the network namespace can connect (env P11KMS_ALLOW_ABSTRACT_SOCKET).")
    var allowAbstractSocket = false

    @OptionGroup var backup: BackupOptions

    @Option(help: ArgumentHelp("Encryptions per root key, counted in the token, before Encrypt refuses the key until 'p11kms rotate'; Status is unhealthy from 99 % (env P11KMS_ENCRYPTION_BUDGET; default 2^32).", valueName: "n"))
    var encryptionBudget: String?

    @Flag(help: "Serve although the token lacks root keys this plugin has served (a token restored from an older copy); the missing keys are recorded as lost (env P11KMS_ACCEPT_KEY_ROLLBACK).")
    var acceptKeyRollback = false

    @Flag(help: "Print the effective settings (the PIN redacted) and exit.")
    var printConfig = false

    /// The flag value of each setting key, for resolution and --print-config.
    private var flags: [String: String?] {
        [
            "listen": listen, "module": token.module, "token-label": token.tokenLabel, "pin-file": token.pinFile,
            "softhsm-conf": token.softhsmConf,
            "max-sessions": token.maxSessions, "socket-mode": socketMode, "socket-group": socketGroup,
            "status-version": statusVersion, "disable-v1": disableV1 ? "true" : nil, "worker-threads": workerThreads,
            "completion-queue-threads": completionQueueThreads, "http-listen": httpListen, "log-format": logFormat,
            "log-level": logLevel, "shutdown-grace": shutdownGrace, "probe-interval": probeInterval,
            "canary-interval": canaryInterval, "health-stale-after": healthStaleAfter, "max-queued-calls": maxQueuedCalls,
            "allow-abstract-socket": allowAbstractSocket ? "true" : nil, "state-dir": token.stateDir,
            "token-backups": backup.tokenBackups, "accept-key-rollback": acceptKeyRollback ? "true" : nil,
            "encryption-budget": encryptionBudget,
            "session-key-copies": sessionKeyCopies,
        ]
    }

    func run() throws {
        // Signals are blocked before any thread exists, so every thread inherits the mask and only the sigwait
        // below receives SIGTERM/SIGINT: they are handled once, in one place.
        Signals.blockTermination()
        let settings = try token.resolver()
        if printConfig {
            printSettings(settings)
            return
        }
        let logger = try makeLogger(settings)
        GRPCRuntime.routeCoreLogs(to: logger)
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))

        let tokenLabel = settings.resolve("token-label", flag: token.tokenLabel).value ?? ""
        var configuration = PluginConfiguration(listen: try SocketAddress(listen: settings.resolve("listen", flag: listen).value ?? ""))
        let mode = settings.resolve("socket-mode", flag: socketMode)
        let parsedMode = mode_t(try settings.octalMode("socket-mode", flag: socketMode))
        if case .defaultValue = mode.source {} else { configuration.socketMode = parsedMode }
        configuration.allowAbstractSocket = try settings.bool("allow-abstract-socket", flag: allowAbstractSocket)
        configuration.socketGroup = settings.resolve("socket-group", flag: socketGroup).value
        let version = settings.resolve("status-version", flag: statusVersion)
        guard let parsedVersion = version.value.flatMap(KMSv2Service.StatusVersion.init(rawValue:)) else {
            throw ValidationError("status-version must be v2 or v2beta1 (from \(version.source))")
        }
        configuration.statusVersion = parsedVersion
        configuration.enableV1 = try !settings.bool("disable-v1", flag: disableV1)
        configuration.workerThreads = try settings.int("worker-threads", flag: workerThreads, range: 0...256)
        configuration.completionQueueThreads = try settings.int("completion-queue-threads", flag: completionQueueThreads, range: 1...16)
        configuration.shutdownGrace = try settings.seconds("shutdown-grace", flag: shutdownGrace)
        let http = settings.resolve("http-listen", flag: httpListen).value ?? "off"
        configuration.httpListen = (http == "off" || http.isEmpty) ? nil : try HTTPEndpoint.parse(http)
        configuration.probeInterval = try settings.seconds("probe-interval", flag: probeInterval)
        configuration.canaryInterval = try settings.seconds("canary-interval", flag: canaryInterval)
        if settings.resolve("health-stale-after", flag: healthStaleAfter).value != nil {
            configuration.staleAfter = try settings.seconds("health-stale-after", flag: healthStaleAfter)
        }
        configuration.maxQueuedCalls = try settings.int("max-queued-calls", flag: maxQueuedCalls, range: 1...1_000_000)
        let copies = try settings.bool("session-key-copies", text: sessionKeyCopies)
        do { try configuration.validate() } catch { fail(error.description) }

        let ring = try openKeyRing(token, settings: settings)
        let history = try KeyStateKeeping.atServeStart(
            ring: ring, token: token, settings: settings, backup: backup,
            acceptRollback: try settings.bool("accept-key-rollback", flag: acceptKeyRollback), logger: logger)
        guard let current = ring.current else {
            fail("the token has no current root key; run 'p11kms init' first")
        }
        SessionKeyCopyLog.configure(ring.token.sessionKeyCopies, enabled: copies, logger: logger)
        let service = EnvelopeService(keyRing: ring, budget: try BudgetSetting.make(
            ring: ring, settings: settings, flag: encryptionBudget, registry: registry))
        let metrics = KMSMetrics(logger: logger)
        let server = PluginServer(configuration: configuration, service: service, metrics: metrics,
                                  logger: logger, runtimeVersion: P11KMS.version,
                                  metricsText: { KMSMetrics.withHelp(registry.emitToBuffer()) })
        let wasHealthy = Mutex(true)
        server.health.onChange { health, keyChanged in
            if keyChanged, let key = health.currentKeyID { logger.info("key ring changed", metadata: ["current_key_id": "\(key)"]) }
            let before = wasHealthy.withLock { previous in
                defer { previous = health.healthy }
                return previous
            }
            if health.healthy, !before {
                logger.notice("token healthy again", metadata: ["current_key_id": "\(health.currentKeyID ?? "")"])
            } else if !health.healthy {
                logger.error("token unhealthy", metadata: ["reason": "\(health.reason)"])
            }
        }
        try KeyStateKeeping.watch(server.health, ring: ring, history: history, token: token, settings: settings,
                                  backup: backup, logger: logger)
        do {
            try server.start()
        } catch {
            fail(error.description)
        }
        logger.info("root key", metadata: ["current_key_id": "\(current.keyID)", "token": "\(tokenLabel)"])
        let signal = Signals.waitForTermination()
        logger.info("shutting down", metadata: [
            "signal": "\(signal)", "grace_seconds": "\(configuration.shutdownGrace.components.seconds)",
        ])
        if !server.shutdown() {
            // A thread is stuck inside the token: exit without running exit handlers, which could wait on it.
            Signals.exitNow(0)
        }
    }

    private func printSettings(_ settings: SettingsResolver) {
        print("# p11kms serve: effective settings (flag > environment > file > default); the PIN is never shown")
        for entry in SettingKeys.table {
            let setting = settings.resolve(entry.key, flag: flags[entry.key] ?? nil)
            print("\(entry.key): \(settings.printable(setting))  # \(setting.source)")
        }
        if settings.environment["P11KMS_PIN"].map({ !$0.isEmpty }) == true {
            print("# pin: <redacted>  # environment P11KMS_PIN (used only when no pin-file is set)")
        }
    }

    private func makeLogger(_ settings: SettingsResolver) throws -> Logger {
        let formatSetting = settings.resolve("log-format", flag: logFormat)
        guard let format = formatSetting.value.flatMap(LineLogHandler.Format.init(rawValue:)) else {
            throw ValidationError("log-format must be text or json (from \(formatSetting.source))")
        }
        let levelSetting = settings.resolve("log-level", flag: logLevel)
        guard let level = levelSetting.value.flatMap(Logger.Level.init(rawValue:)) else {
            throw ValidationError("log-level must be one of trace, debug, info, notice, warning, error, critical (from \(levelSetting.source))")
        }
        LoggingSystem.bootstrap { label in LineLogHandler(label: label, format: format, level: level) }
        return Logger(label: "p11kms")
    }
}

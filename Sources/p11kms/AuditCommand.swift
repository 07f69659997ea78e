import ArgumentParser
import EtcdAudit
import Foundation
import Synchronization

struct Audit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Report which Secrets in etcd are encrypted, under which key, and which are not.",
        discussion: """
        Reads every Secret under <prefix>/secrets/ (and every object of the other --resources) straight from etcd \
        (KV.Range, in pages, all at one revision) and classifies its stored bytes: plaintext-private-key, plaintext, \
        current, stale, unknown-key, other-provider, kms-v1, local-key or undecodable. The running plugin is asked over its socket which key is current (Status) and, with one \
        Decrypt per key_id found, which older keys it still holds; no PIN is needed. Plaintexts are never printed.

        Plaintext Secrets whose data holds a private key (PEM, or a Fabric MSP keystore entry) are \
        plaintext-private-key and listed first; only their data keys' names are printed. --fabric audits only the \
        Secrets a Fabric operator keeps node keys in. The JSON output records the audit's scope, which \
        'p11kms destroy --audit-json' checks.

        --verify asks the plugin to unwrap every distinct data key of this provider's Secrets and lists those it \
        cannot: run it after retiring a key to prove nothing still depends on it.

        Exit status: 0 when every Secret is current (and verified, with --verify), 1 when any is not, 2 when the \
        audit could not run (etcd or the plugin unreachable, bad certificates or flags).
        """)

    @Option(name: .customLong("etcd-endpoints"),
            help: ArgumentHelp("etcd client URLs, comma-separated (env P11KMS_ETCD_ENDPOINTS).", valueName: "url,..."))
    var etcdEndpoints: String?

    @Option(help: ArgumentHelp("CA bundle that signed etcd's server certificate (kubeadm: /etc/kubernetes/pki/etcd/ca.crt).",
                               valueName: "file"))
    var cacert: String?

    @Option(help: ArgumentHelp("Client certificate (kubeadm: /etc/kubernetes/pki/apiserver-etcd-client.crt).", valueName: "file"))
    var cert: String?

    @Option(help: ArgumentHelp("Client private key (kubeadm: /etc/kubernetes/pki/apiserver-etcd-client.key).", valueName: "file"))
    var key: String?

    @Option(help: ArgumentHelp("etcd user for password authentication; 'user:password' is accepted too.", valueName: "name"))
    var user: String?

    @Option(help: ArgumentHelp("etcd password (or env P11KMS_ETCD_PASSWORD, which keeps it out of the process list).",
                               valueName: "password"))
    var password: String?

    @Option(help: ArgumentHelp("kube-apiserver's --etcd-prefix (env P11KMS_ETCD_PREFIX; default /registry).", valueName: "prefix"))
    var prefix: String?

    @Option(help: ArgumentHelp("Resource types the EncryptionConfiguration encrypts with this provider, comma-separated (env P11KMS_AUDIT_RESOURCES; default secrets).",
                               valueName: "type,..."))
    var resources: String?

    @Flag(help: "Only the Secrets a Fabric operator keeps node keys in (*-keystore, *-msp, *-tls, *-crypto); env P11KMS_AUDIT_FABRIC=true.")
    var fabric = false

    @Option(help: ArgumentHelp("The KMS provider name in the EncryptionConfiguration (env P11KMS_PROVIDER).", valueName: "name"))
    var provider: String?

    @Option(help: ArgumentHelp("The running plugin's socket (env P11KMS_LISTEN; default unix:///var/run/kms/p11kms.sock).",
                               valueName: "address"))
    var listen: String?

    @Option(name: .customLong("namespace"),
            help: ArgumentHelp("Audit only this namespace; repeat or separate with commas for several.", valueName: "name"))
    var namespaces: [String] = []

    @Flag(help: "Ask the plugin to unwrap every distinct data key of this provider's Secrets and report failures.")
    var verify = false

    @Option(help: ArgumentHelp("Output: table or json.", valueName: "format"))
    var format: String = "table"

    @Option(help: ArgumentHelp("Secrets per etcd Range call.", valueName: "n"))
    var pageSize: Int = 1000

    @Option(help: ArgumentHelp("Seconds each etcd or plugin call may take.", valueName: "seconds"))
    var timeout: Double = 30

    @Option(help: ArgumentHelp("Secrets listed in the table's 'not current' section.", valueName: "n"))
    var list: Int = 50

    func run() throws {
        // The gRPC core logs handshake failures to stderr itself; the audit reports them in its own message.
        setenv("GRPC_VERBOSITY", "NONE", 0)
        let env = ProcessInfo.processInfo.environment
        guard format == "table" || format == "json" else { fail("--format must be table or json", code: 2) }
        guard let endpoints = (etcdEndpoints ?? env["P11KMS_ETCD_ENDPOINTS"]).map(Self.split), !endpoints.isEmpty else {
            fail("--etcd-endpoints is required (e.g. https://127.0.0.1:2379)", code: 2)
        }
        guard let provider = provider ?? env["P11KMS_PROVIDER"], !provider.isEmpty else {
            fail("--provider is required: the kms provider name in the EncryptionConfiguration", code: 2)
        }
        guard pageSize > 0, timeout > 0 else { fail("--page-size and --timeout must be positive", code: 2) }
        var user = self.user
        var password = self.password ?? env["P11KMS_ETCD_PASSWORD"]
        if let given = user, password == nil, let colon = given.firstIndex(of: ":") {
            user = String(given[..<colon])
            password = String(given[given.index(after: colon)...])
        }
        let callTimeout = Duration.milliseconds(Int64(timeout * 1000))

        let resourceNames = Self.split(resources ?? env["P11KMS_AUDIT_RESOURCES"] ?? "secrets")
        let resourceTypes: [ResourceType]
        switch Result(catching: { () throws(AuditError) in try ResourceType.list(resourceNames) }) {
        case .success(let value): resourceTypes = value
        case .failure(let error): fail(error.message, code: 2)
        }
        guard !resourceTypes.isEmpty else { fail("--resources lists no resource type", code: 2) }
        let fabric = self.fabric || ["true", "1", "yes"].contains(env["P11KMS_AUDIT_FABRIC"]?.lowercased() ?? "")
        if fabric, !resourceTypes.contains(.secrets) { fail("--fabric selects Secrets: --resources must include secrets", code: 2) }
        let options = AuditOptions(provider: provider, etcdPrefix: prefix ?? env["P11KMS_ETCD_PREFIX"] ?? "/registry",
                                   namespaces: namespaces.flatMap(Self.split), pageSize: pageSize, verify: verify,
                                   resources: resourceTypes, fabric: fabric)
        let report: AuditReport
        switch Result(catching: { () throws(AuditError) in
            try audit(endpoints: endpoints, user: user, password: password, timeout: callTimeout, options: options)
        }) {
        case .success(let value): report = value
        case .failure(let error): fail("audit could not run: \(error.message)", code: 2)
        }
        let output = format == "json" ? report.renderJSON() : report.renderTable(listLimit: max(0, list))
        Self.writeStandardOutput(output)
        if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
    }

    private func audit(endpoints: [String], user: String?, password: String?, timeout: Duration,
                       options: AuditOptions) throws(AuditError) -> AuditReport {
        var configuration = try EtcdClientConfiguration(
            endpoints: endpoints, caCertificateFile: cacert, certificateFile: cert, privateKeyFile: key,
            user: user, password: password)
        configuration.timeout = timeout
        let etcd = try EtcdClient(configuration: configuration)
        let env = ProcessInfo.processInfo.environment
        let plugin = try PluginClient(endpoint: listen ?? env["P11KMS_LISTEN"] ?? "unix:///var/run/kms/p11kms.sock",
                                      timeout: timeout)
        let progress = ProgressLine.onTerminal()
        let report = try AuditRunner(etcd: etcd, plugin: plugin, options: options).run(progress: progress?.update)
        progress?.finish(report)
        etcd.close()
        return report
    }

    /// Writes everything, or stops quietly when the reader went away (`p11kms audit | head`).
    static func writeStandardOutput(_ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            bytes = bytes.dropFirst(written)
        }
    }

    static func split(_ list: String) -> [String] {
        list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
}

/// A progress line on stderr, only when stderr is a terminal; redrawn at most ten times a second.
final class ProgressLine: Sendable {
    private let lastDraw = Mutex<ContinuousClock.Instant?>(nil)

    static func onTerminal() -> ProgressLine? { isatty(STDERR_FILENO) == 1 ? ProgressLine() : nil }

    func update(_ progress: AuditProgress) {
        let now = ContinuousClock.now
        let due = lastDraw.withLock { last -> Bool in
            if let last, now - last < .milliseconds(100), progress.done < progress.total { return false }
            last = now
            return true
        }
        guard due else { return }
        let seconds = max(0.001, Double(progress.elapsed.components.seconds) + Double(progress.elapsed.components.attoseconds) / 1e18)
        let rate = Int(Double(progress.done) / seconds)
        let what = progress.phase == .scanning ? "scanning etcd" : "verifying data keys"
        let unit = progress.phase == .scanning ? "Secrets" : "DEKs"
        let total = progress.total > 0 ? " / \(progress.total)" : ""
        write("\r\u{1b}[K\(what): \(progress.done)\(total) \(unit) (\(rate)/s)")
    }

    func finish(_ report: AuditReport) {
        let rate = report.scanSeconds > 0 ? Int(Double(report.total) / report.scanSeconds) : report.total
        write("\r\u{1b}[Kscanned \(report.total) Secrets in \(String(format: "%.2f", report.scanSeconds)) s (\(rate)/s)\n")
    }

    private func write(_ text: String) { FileHandle.standardError.write(Data(text.utf8)) }
}

import EtcdAudit
import Foundation
import Testing
import TestSupport

/// The command line's exit statuses and messages: 0 all current, 1 anything else, 2 the audit could not run.
@Suite(.serialized) struct AuditCommandTests {
    @Test func tlsClientCertificatesAndExitStatus2() throws {
        let world = try AuditWorld(name: "audit-tls", tls: true)
        try world.writeSecrets(5, namespace: "org1", state: try world.kmsV2State())
        let ok = try world.cli([])
        #expect(ok.status == 0, "\(ok.stdout)\(ok.stderr)")
        #expect(ok.stdout.contains("OK: every Secret is current."))
        let certs = try #require(world.etcd.certificates)

        let failures: [(String, [String], String)] = [
            ("no client certificate", ["--etcd-endpoints", world.etcd.endpoint, "--cacert", certs.caFile], "etcd is unreachable"),
            ("untrusted server", ["--etcd-endpoints", world.etcd.endpoint, "--cacert", certs.foreignCAFile,
                                  "--cert", certs.clientCertFile, "--key", certs.clientKeyFile], "TLS handshake failed"),
            ("foreign client", ["--etcd-endpoints", world.etcd.endpoint, "--cacert", certs.caFile,
                                "--cert", certs.foreignClientCertFile, "--key", certs.foreignClientKeyFile], "etcd is unreachable"),
            ("missing file", ["--etcd-endpoints", world.etcd.endpoint, "--cacert", "/nonexistent/ca.crt"], "cannot read --cacert"),
            ("not a certificate", ["--etcd-endpoints", world.etcd.endpoint, "--cacert", world.etcd.directory.path + "/etcd.log"],
             "not PEM"),
            ("cert without key", ["--etcd-endpoints", world.etcd.endpoint, "--cacert", certs.caFile, "--cert", certs.clientCertFile],
             "together"),
        ]
        for (label, arguments, message) in failures {
            let result = try world.cli([], etcdArguments: arguments)
            #expect(result.status == 2, "\(label): \(result.status) \(result.stderr)")
            #expect(result.stderr.contains("p11kms: audit could not run:"), "\(label): \(result.stderr)")
            #expect(result.stderr.contains(message), "\(label): \(result.stderr)")
            #expect(result.stdout.isEmpty, "\(label)")
        }
    }

    @Test func unreachableEtcdOrPluginAndBadFlags() throws {
        let world = try AuditWorld(name: "audit-exit")
        try world.put(APIServerWriter.key(namespace: "a", name: "b"), AuditWorld.plaintext("a", "b"))
        let plain = try world.cli([])
        #expect(plain.status == 1)

        let deadEtcd = "http://127.0.0.1:\(try FreePort.find())"
        let noEtcd = try world.cli([], etcdArguments: ["--etcd-endpoints", deadEtcd])
        #expect(noEtcd.status == 2)
        #expect(noEtcd.stderr.contains("etcd is unreachable") && noEtcd.stderr.contains(deadEtcd), "\(noEtcd.stderr)")

        // A second endpoint that answers is enough.
        let failover = try world.cli([], etcdArguments: ["--etcd-endpoints", "\(deadEtcd),\(world.etcd.endpoint)"])
        #expect(failover.status == 1, "\(failover.stderr)")

        let noPlugin = try world.cli([], listen: "unix://\(world.etcd.directory.path)/absent.sock")
        #expect(noPlugin.status == 2)
        #expect(noPlugin.stderr.contains("does not answer"), "\(noPlugin.stderr)")

        for (label, arguments) in [("format", ["--format", "xml"]), ("page size", ["--page-size", "0"]),
                                   ("listen", ["--listen", "tcp://1.2.3.4:5"]), ("namespace", ["--namespace", "a/b"])] {
            let result = try world.cli(arguments)
            #expect(result.status == 2, "\(label): \(result.stderr)")
        }
        let noProvider = try Command.run(PluginProcess.executable, ["audit", "--etcd-endpoints", world.etcd.endpoint,
                                                                    "--listen", world.plugin.listen])
        #expect(noProvider.status == 2 && noProvider.stderr.contains("--provider"), "\(noProvider.stderr)")
        let noEndpoints = try Command.run(PluginProcess.executable, ["audit", "--provider", "hsm", "--listen", world.plugin.listen])
        #expect(noEndpoints.status == 2 && noEndpoints.stderr.contains("--etcd-endpoints"), "\(noEndpoints.stderr)")

        // The plugin stops: the audit cannot run.
        world.plugin.stop()
        let stopped = try world.cli([])
        #expect(stopped.status == 2, "\(stopped.stderr)")
    }

    /// Password authentication over TLS (server certificate only); never over plain http.
    @Test func passwordAuthentication() throws {
        let etcd = try EtcdFixture(tls: true, clientCertAuth: false)
        let plugin = try PluginProcess(name: "audit-auth")
        try plugin.start()
        let certs = try #require(etcd.certificates)
        let etcdClient = try EtcdClient(configuration: EtcdClientConfiguration(endpoints: [etcd.endpoint], caCertificatePEM: certs.pem(certs.caFile)))
        let key = APIServerWriter.key(namespace: "org1", name: "s")
        try etcdClient.put(key: Array(key.utf8), value: AuditWorld.plaintext("org1", "s"))
        try etcd.enableAuth(rootPassword: "pw-123")
        func cli(_ extra: [String]) throws -> Command.Result {
            try Command.run(PluginProcess.executable, ["audit", "--provider", AuditWorld.provider, "--listen", plugin.listen,
                                                       "--etcd-endpoints", etcd.endpoint, "--cacert", certs.caFile] + extra)
        }
        // Exit 1: the one Secret is plaintext (with a private key), so the audit ran.
        let good = try cli(["--user", "root", "--password", "pw-123"])
        #expect(good.status == 1 && good.stdout.contains("plaintext-private-key"), "\(good.stderr)")
        let combined = try cli(["--user", "root:pw-123"])
        #expect(combined.status == 1, "\(combined.stderr)")
        let fromEnvironment = try Command.run(PluginProcess.executable, ["audit", "--provider", AuditWorld.provider, "--listen", plugin.listen,
                                                                         "--etcd-endpoints", etcd.endpoint, "--cacert", certs.caFile, "--user", "root"],
                                              environment: ProcessInfo.processInfo.environment.merging(["P11KMS_ETCD_PASSWORD": "pw-123"]) { $1 })
        #expect(fromEnvironment.status == 1, "\(fromEnvironment.stderr)")
        let wrong = try cli(["--user", "root", "--password", "nope"])
        #expect(wrong.status == 2)
        #expect(wrong.stderr.contains("authentication as root failed"), "\(wrong.stderr)")
        let anonymous = try cli([])
        #expect(anonymous.status == 2, "\(anonymous.stderr)")
    }

    /// Credentials are refused before anything is sent when any endpoint is plain http.
    @Test func credentialsOverHTTPAreRefused() throws {
        let world = try AuditWorld(name: "audit-http-auth")
        try world.writeSecrets(2, namespace: "org1", state: try world.kmsV2State())
        for extra in [["--user", "root", "--password", "pw"], ["--user", "root:pw"]] {
            let result = try world.cli(extra)
            #expect(result.status == 2, "\(result.stderr)")
            #expect(result.stderr.contains("\(world.etcd.endpoint): --user/--password would travel unencrypted"), "\(result.stderr)")
            #expect(result.stdout.isEmpty)
            #expect(!result.stderr.contains("pw"), "the password is never echoed: \(result.stderr)")
        }
        // Also when only one of several endpoints is http.
        let tls = try EtcdFixture(tls: true, clientCertAuth: false)
        let mixed = try world.cli(["--user", "root:pw"], etcdArguments: ["--etcd-endpoints", "\(tls.endpoint),\(world.etcd.endpoint)",
                                                                        "--cacert", tls.certificates!.caFile])
        #expect(mixed.status == 2 && mixed.stderr.contains("would travel unencrypted"), "\(mixed.stderr)")
    }

    /// A TLS verification failure on the first endpoint fails the audit instead of moving on to the next one.
    @Test func noFailoverAcrossTLSVerificationFailure() throws {
        let world = try AuditWorld(name: "audit-tls-failover", tls: true)
        try world.writeSecrets(2, namespace: "org1", state: try world.kmsV2State())
        // A second etcd with a CA of its own: its certificate does not verify against the first one's CA.
        let impostor = try EtcdFixture(tls: true)
        let certs = try #require(world.etcd.certificates)
        let tlsArguments = ["--cacert", certs.caFile, "--cert", certs.clientCertFile, "--key", certs.clientKeyFile]
        let alone = try world.cli([], etcdArguments: ["--etcd-endpoints", world.etcd.endpoint] + tlsArguments)
        #expect(alone.status == 0, "\(alone.stderr)")
        let result = try world.cli([], etcdArguments: ["--etcd-endpoints", "\(impostor.endpoint),\(world.etcd.endpoint)"] + tlsArguments)
        #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
        #expect(result.stderr.contains("etcd \(impostor.endpoint): TLS handshake failed"), "\(result.stderr)")
        #expect(result.stderr.contains("not trying other endpoints"), "\(result.stderr)")
        // An endpoint that is down is still skipped.
        let down = "https://127.0.0.1:\(try FreePort.find())"
        let failover = try world.cli([], etcdArguments: ["--etcd-endpoints", "\(down),\(world.etcd.endpoint)"] + tlsArguments)
        #expect(failover.status == 0, "\(failover.stderr)")
    }

    @Test func emptyClusterIsAllCurrent() throws {
        let world = try AuditWorld(name: "audit-empty")
        let result = try world.cli(["--format", "json"])
        #expect(result.status == 0)
        let json = try AuditJSON(result.stdout)
        #expect(json.summary.total == 0 && json.secrets.isEmpty && json.verify == nil)
    }
}

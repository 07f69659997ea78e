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
                                  "--cert", certs.clientCertFile, "--key", certs.clientKeyFile], "etcd is unreachable"),
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

    @Test func passwordAuthentication() throws {
        let world = try AuditWorld(name: "audit-auth")
        try world.writeSecrets(3, namespace: "org1", state: try world.kmsV2State())
        try world.etcd.enableAuth(rootPassword: "pw-123")
        let good = try world.cli(["--user", "root", "--password", "pw-123"])
        #expect(good.status == 0, "\(good.stderr)")
        let combined = try world.cli(["--user", "root:pw-123"])
        #expect(combined.status == 0, "\(combined.stderr)")
        let wrong = try world.cli(["--user", "root", "--password", "nope"])
        #expect(wrong.status == 2)
        #expect(wrong.stderr.contains("authentication as root failed"), "\(wrong.stderr)")
        let anonymous = try world.cli([])
        #expect(anonymous.status == 2, "\(anonymous.stderr)")
    }

    @Test func emptyClusterIsAllCurrent() throws {
        let world = try AuditWorld(name: "audit-empty")
        let result = try world.cli(["--format", "json"])
        #expect(result.status == 0)
        let json = try AuditJSON(result.stdout)
        #expect(json.summary.total == 0 && json.secrets.isEmpty && json.verify == nil)
    }
}

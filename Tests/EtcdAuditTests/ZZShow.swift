import Foundation
import Testing
import TestSupport

@Test func zzShow() throws {
    guard ProcessInfo.processInfo.environment["SHOW"] != nil else { return }
    let world = try AuditWorld(name: "show", tls: true)
    try world.writeSecrets(30, namespace: "org1", state: try world.kmsV2State())
    _ = try world.rotate()
    try world.writeSecrets(20, namespace: "org2", state: try world.kmsV2State())
    try world.put(APIServerWriter.key(namespace: "default", name: "plain"), AuditWorld.plaintext("default", "plain"))
    let r = try world.cli(["--verify", "--list", "3"])
    print("STATUS", r.status, "\n", r.stdout, "\nSTDERR", r.stderr)
    let certs = world.etcd.certificates!
    let bad = try world.cli([], etcdArguments: ["--etcd-endpoints", world.etcd.endpoint, "--cacert", certs.foreignCAFile, "--cert", certs.clientCertFile, "--key", certs.clientKeyFile])
    print("BAD", bad.status, bad.stderr)
    let nocert = try world.cli([], etcdArguments: ["--etcd-endpoints", world.etcd.endpoint, "--cacert", certs.caFile])
    print("NOCERT", nocert.status, nocert.stderr)
    let j = try world.cli(["--format", "json", "--namespace", "default,org2"])
    print(j.stdout.prefix(600))
}

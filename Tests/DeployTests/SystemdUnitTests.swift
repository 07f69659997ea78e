import Foundation
import Testing
import TestSupport
import Yams

/// deploy/systemd/p11kms.service serves with the example config file, is hardened, and can write only the token
/// and socket folders; systemd itself accepts every line of it.
@Suite("systemd unit")
struct SystemdUnitTests {
    static let unitPath = "deploy/systemd/p11kms.service"

    @Test func execStartServesWithTheConfigFileThatAgreesWithTheEncryptionConfiguration() throws {
        let unit = SystemdUnit(try Repository.text(Self.unitPath))
        let execStart = try #require(unit.value("Service", "ExecStart"))
        let words = execStart.split(separator: " ").map(String.init)
        #expect(words.first == Canonical.binary)
        #expect(words.dropFirst().first == "serve")
        #expect(words.contains("--pin-file") || words.contains("--config"))
        if let index = words.firstIndex(of: "--config") {
            #expect(words[index + 1] == Canonical.configFile)
            // That file is deploy/config.yaml: the same socket as the EncryptionConfiguration, the PIN from a file.
            let file = try asMap(Repository.yaml("deploy/config.yaml"))
            #expect(file["listen"] as? String == (try EncryptionConfig.load()).endpoint)
            #expect(file["pin-file"] as? String == Canonical.pinFile)
        }
        // SoftHSM's config is set by the unit itself (the optional environment file may be missing) and by the config
        // file, to the file the static pod and the bootstrap use.
        #expect(unit.values("Service", "Environment").contains("P11KMS_SOFTHSM_CONF=\(Canonical.softHSMConf)"))
        #expect(try asMap(Repository.yaml("deploy/config.yaml"))["softhsm-conf"] as? String == Canonical.softHSMConf)
        #expect(unit.values("Service", "EnvironmentFile").contains("-/etc/p11kms/p11kms.env"))
        let environment = try Repository.text("deploy/systemd/p11kms.env").split(separator: "\n").filter { !$0.hasPrefix("#") }
        for line in environment where line.hasPrefix("SOFTHSM2_CONF=") || line.hasPrefix("P11KMS_SOFTHSM_CONF=") {
            #expect(line.hasSuffix("=\(Canonical.softHSMConf)"), "\(line)")
        }
        // Started means serving: p11kms itself sends READY=1 (SystemdNotifier), so the unit waits for it.
        #expect(unit.value("Service", "Type") == "notify")
        #expect(unit.value("Service", "NotifyAccess") == "main")
        #expect(unit.value("Service", "Restart") == "always")
        #expect(unit.value("Install", "WantedBy") == "multi-user.target")
        #expect(unit.value("Unit", "Before")?.contains("kube-apiserver.service") == true)
    }

    @Test func hardeningLeavesOnlyTheTokenAndSocketFoldersWritable() throws {
        let unit = SystemdUnit(try Repository.text(Self.unitPath))
        let expected: [String: String] = [
            "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
            "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
            "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes", "RestrictSUIDSGID": "yes",
            "RestrictNamespaces": "yes", "RestrictRealtime": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
            "SystemCallArchitectures": "native", "CapabilityBoundingSet": "", "UMask": "0077", "LimitCORE": "0",
        ]
        for (key, value) in expected.sorted(by: { $0.key < $1.key }) {
            #expect(unit.value("Service", key) == value, "\(key)")
        }
        let writable = unit.values("Service", "ReadWritePaths").flatMap { $0.split(separator: " ").map(String.init) }
        // "-": a path that does not exist yet (the token directory before the bootstrap) must not fail the start
        // with 226/NAMESPACE.
        #expect(writable.allSatisfy { $0.hasPrefix("-") }, "\(writable)")
        #expect(Set(writable.map { $0.hasPrefix("-") ? String($0.dropFirst()) : $0 }) == [Canonical.tokenDirectory, Canonical.socketDirectory])
        // systemd creates the socket folder (/run/kms is /var/run/kms) and the state folder above the tokens.
        #expect("/var/run/" + (unit.value("Service", "RuntimeDirectory") ?? "") == Canonical.socketDirectory)
        #expect(Canonical.tokenDirectory.hasPrefix("/var/lib/" + (unit.value("Service", "StateDirectory") ?? "?") + "/"))
        let families = unit.value("Service", "RestrictAddressFamilies")?.split(separator: " ") ?? []
        #expect(families.contains("AF_UNIX"))
    }

    /// systemd-analyze verify reports unknown keys and bad values; the binary is swapped for /bin/true since
    /// p11kms is not installed at /usr/local/bin here.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze")))
    func systemdAcceptsEveryLine() throws {
        let folder = try TemporaryDirectory.make(prefix: "unit")
        defer { try? FileManager.default.removeItem(at: folder) }
        let text = try Repository.text(Self.unitPath)
            .replacingOccurrences(of: "ExecStart=\(Canonical.binary) ", with: "ExecStart=/bin/true ")
        let copy = folder.appendingPathComponent("p11kms.service").path
        try text.write(toFile: copy, atomically: true, encoding: .utf8)
        let result = try Command.run("/usr/bin/systemd-analyze", ["verify", copy])
        #expect(result.status == 0, "systemd-analyze verify: \(result.stderr)")
        #expect(result.stderr.isEmpty && result.stdout.isEmpty, "systemd-analyze verify: \(result.stdout)\(result.stderr)")
    }
}

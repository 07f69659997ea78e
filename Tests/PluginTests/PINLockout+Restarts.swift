import Foundation
import Testing
import TestSupport

/// A rejected PIN is recorded in the state directory; restarts with the same PIN refuse without calling C_Login
/// (counted by the fault-injecting module, which logs every call), exit 78, and say how to clear it.
@Suite("PIN lockout guard across restarts")
struct PINLockoutTests {
    @Test("three restarts with the same wrong PIN: one C_Login, exit 78 each time; a fixed PIN file then serves")
    func sameWrongPINIsNotRetried() throws {
        let plugin = try PluginProcess(name: "lockout")
        let root = try TemporaryDirectory.make(prefix: "lockout-log")
        let log = root.appendingPathComponent("calls.log").path
        let plan = root.appendingPathComponent("plan").path
        _ = FileManager.default.createFile(atPath: plan, contents: Data())
        _ = FileManager.default.createFile(atPath: log, contents: Data())
        let fault = ["FAULTPKCS11_MODULE": SoftHSMFixture.modulePath, "FAULTPKCS11_LOG": log, "FAULTPKCS11_CONTROL": plan]
        func logins() -> Int {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains(" C_Login ") }.count
        }
        let pinFile = try plugin.hsm.writePINFile("0000-wrong")
        let arguments = ["--module", FaultModule.path, "--token-label", plugin.tokenLabel, "--pin-file", pinFile]
        let serve = ["serve", "--listen", plugin.listen, "--http-listen", "off"] + arguments

        let first = try plugin.run(serve, environment: fault)
        #expect(first.status == 78)
        #expect(first.stderr.contains("rejected the PIN"), "\(first.stderr)")
        #expect(logins() == 1)
        // The state directory also holds the rotation lock file that `init` took and the token backup it made; the
        // record is the pin-rejected file.
        let records = try FileManager.default.contentsOfDirectory(atPath: plugin.stateDirectory).filter { $0.hasPrefix("pin-rejected-") }
        #expect(records.count == 1)
        let record = try #require(records.first.map { plugin.stateDirectory + "/" + $0 })
        var st = stat()
        #expect(stat(plugin.stateDirectory, &st) == 0 && st.st_mode & 0o777 == 0o700)
        #expect(stat(record, &st) == 0 && st.st_mode & 0o777 == 0o600)
        let text = try String(contentsOfFile: record, encoding: .utf8)
        #expect(!text.contains("0000-wrong"))
        #expect(text.contains(plugin.tokenLabel) && text.contains("pin_pbkdf2_sha256"))

        for _ in 0..<2 {
            let again = try plugin.run(serve, environment: fault)
            #expect(again.status == 78)
            #expect(again.stderr.contains("not logging in") && again.stderr.contains("delete \(record)"), "\(again.stderr)")
            #expect(!again.stderr.contains("0000-wrong"))
        }
        #expect(logins() == 1)
        // init (the static pod's init container) is guarded the same way.
        let initRun = try plugin.run(["init"] + arguments, environment: fault)
        #expect(initRun.status == 78 && initRun.stderr.contains("not logging in"))
        #expect(logins() == 1)
        #expect(!FileManager.default.fileExists(atPath: plugin.socketPath))

        // A different wrong PIN is tried once (and replaces the record).
        try "1111-wrong\n".write(toFile: pinFile, atomically: true, encoding: .utf8)
        let other = try plugin.run(serve, environment: fault)
        #expect(other.status == 78 && other.stderr.contains("rejected the PIN"))
        #expect(logins() == 2)
        #expect(try plugin.run(serve, environment: fault).status == 78)
        #expect(logins() == 2)

        // The right PIN in the same file: serves, and the record is gone.
        try (SoftHSMFixture.userPIN + "\n").write(toFile: pinFile, atomically: true, encoding: .utf8)
        try plugin.start(["--module", FaultModule.path, "--pin-file", pinFile, "--http-listen", "off"], environment: fault)
        #expect(try plugin.client().status().healthz == "ok")
        #expect(logins() == 3)
        #expect(!FileManager.default.fileExists(atPath: record))
        #expect(plugin.stop() == 0)
    }

    @Test("deleting the record named in the message lets the same PIN be tried once more")
    func deletingTheRecordRetries() throws {
        let plugin = try PluginProcess(name: "lockout-clear")
        let pinFile = try plugin.hsm.writePINFile("2222-wrong")
        let serve = ["serve", "--listen", plugin.listen, "--http-listen", "off", "--module", SoftHSMFixture.modulePath,
                     "--token-label", plugin.tokenLabel, "--pin-file", pinFile]
        #expect(try plugin.run(serve).status == 78)
        let refused = try plugin.run(serve)
        #expect(refused.status == 78)
        let record = try #require(try FileManager.default.contentsOfDirectory(atPath: plugin.stateDirectory).first { $0.hasPrefix("pin-rejected-") })
        #expect(refused.stderr.contains(record))
        try FileManager.default.removeItem(atPath: plugin.stateDirectory + "/" + record)
        let retried = try plugin.run(serve)
        #expect(retried.status == 78 && retried.stderr.contains("rejected the PIN"), "\(retried.stderr)")
        // P11KMS_PIN is guarded too, and named as the source.
        let viaEnvironment = ["serve", "--listen", plugin.listen, "--http-listen", "off", "--token-label", plugin.tokenLabel]
        #expect(try plugin.run(viaEnvironment, environment: ["P11KMS_PIN": "3333-wrong"]).status == 78)
        let second = try plugin.run(viaEnvironment, environment: ["P11KMS_PIN": "3333-wrong"])
        #expect(second.status == 78 && second.stderr.contains("from P11KMS_PIN"), "\(second.stderr)")
    }
}

import Foundation
import Testing
import TestSupport

/// P11KMS_PIN is gone from the plugin's environment once read: /proc/PID/environ (what the kernel shows other
/// processes of the same user, and what a child would inherit) no longer holds the name or the PIN.
@Suite("P11KMS_PIN leaves the environment")
struct PINEnvironmentTests {
    func environ(of pid: Int32) throws -> [String] {
        let data = try Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ"))
        return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    func serve(_ plugin: PluginProcess, pinFile: String?) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: PluginProcess.executable)
        process.arguments = ["serve", "--listen", plugin.listen, "--module", SoftHSMFixture.modulePath,
                             "--token-label", plugin.tokenLabel, "--http-listen", "off"] + (pinFile.map { ["--pin-file", $0] } ?? [])
        process.environment = plugin.environment.merging(["P11KMS_PIN": SoftHSMFixture.userPIN, "P11KMS_MARKER": "kept"]) { _, b in b }
        process.standardError = FileHandle.nullDevice
        try process.run()
        ChildProcesses.register(process.processIdentifier)
        return process
    }

    @Test("serve with P11KMS_PIN: logged in and serving, and /proc/PID/environ has neither the name nor the PIN")
    func scrubbedAfterReading() throws {
        for pinFile in [nil, "file"] as [String?] {
            let plugin = try PluginProcess(name: "envpin")
            let process = try serve(plugin, pinFile: pinFile == nil ? nil : plugin.pinFile)
            defer { process.terminate(); process.waitUntilExit() }
            let client = try plugin.client()
            #expect(waitUntil(20) { (try? client.status().healthz) == "ok" })
            let seed = randomBytes(32)
            let wrapped = try client.encrypt(seed)
            #expect(try client.decrypt(wrapped.ciphertext, keyID: wrapped.keyID) == seed)
            let entries = try environ(of: process.processIdentifier)
            #expect(!entries.contains { $0.hasPrefix("P11KMS_PIN") }, "\(pinFile ?? "env")")
            #expect(!entries.contains { $0.contains(SoftHSMFixture.userPIN) })
            // The rest of the environment is untouched.
            #expect(entries.contains("P11KMS_MARKER=kept"))
            #expect(entries.contains { $0.hasPrefix("SOFTHSM2_CONF=") })
        }
    }
}

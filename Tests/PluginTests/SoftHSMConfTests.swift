import Foundation
import Testing
import TestSupport

/// The `softhsm-conf` setting: every token command exports it as SOFTHSM2_CONF before loading the module, so an
/// admin's `p11kms keys --config FILE` finds the token without SOFTHSM2_CONF in the shell; a token that cannot be
/// found names the SoftHSM config that was read and what a joining node has to copy.
@Suite("softhsm-conf setting")
struct SoftHSMConfTests {
    /// The test process's environment without SOFTHSM2_CONF (an admin's shell).
    static func bareEnvironment(_ extra: [String: String] = [:]) -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["SOFTHSM2_CONF"] = nil
        env["P11KMS_SOFTHSM_CONF"] = nil
        env["P11KMS_PIN"] = nil
        return env.merging(extra) { _, b in b }
    }

    static func p11kms(_ arguments: [String], environment: [String: String]) throws -> Command.Result {
        try Command.run(PluginProcess.executable, arguments, environment: environment)
    }

    static func writeConfig(_ plugin: PluginProcess, softhsmConf: String?) throws -> String {
        let path = plugin.hsm.root.appendingPathComponent("config-\(softhsmConf == nil ? "without" : "with").yaml").path
        var lines = ["module: \(SoftHSMFixture.modulePath)", "token-label: \(plugin.tokenLabel)", "pin-file: \(plugin.pinFile)"]
        if let softhsmConf { lines.append("softhsm-conf: \(softhsmConf)") }
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("keys, rotate --stage, rotate and retire find the token through softhsm-conf in the config file")
    func configFileFindsTheToken() throws {
        let plugin = try PluginProcess(name: "conf-file")
        let config = try Self.writeConfig(plugin, softhsmConf: plugin.hsm.configPath)
        let env = Self.bareEnvironment()

        let keys = try Self.p11kms(["keys", "--config", config, "--format", "json"], environment: env)
        #expect(keys.status == 0, "\(keys.stderr)")
        #expect(keys.stdout.contains(plugin.initialKeyID))

        let staged = try Self.p11kms(["rotate", "--stage", "--config", config], environment: env)
        #expect(staged.status == 0, "\(staged.stderr)")
        let promoted = try Self.p11kms(["rotate", "--config", config], environment: env)
        #expect(promoted.status == 0, "\(promoted.stderr)")
        #expect(promoted.stdout == staged.stdout, "rotate promotes the staged key")
        let retired = try Self.p11kms(["retire", plugin.initialKeyID, "--config", config], environment: env)
        #expect(retired.status == 0, "\(retired.stderr)")
        let after = try Self.p11kms(["keys", "--config", config], environment: env)
        #expect(after.stdout.split(separator: "\n").contains { $0.hasPrefix(plugin.initialKeyID) && $0.contains(" retired ") }, "\(after.stdout)")

        // The setting wins over an inherited SOFTHSM2_CONF that points elsewhere.
        let wrong = try Self.p11kms(["keys", "--config", config], environment: Self.bareEnvironment(["SOFTHSM2_CONF": "/nonexistent/softhsm2.conf"]))
        #expect(wrong.status == 0, "\(wrong.stderr)")
    }

    @Test("without softhsm-conf the error says which SoftHSM config was read and what to copy")
    func withoutTheSettingTheErrorNamesTheConf() throws {
        let plugin = try PluginProcess(name: "conf-missing")
        let config = try Self.writeConfig(plugin, softhsmConf: nil)
        let unset = try Self.p11kms(["keys", "--config", config], environment: Self.bareEnvironment())
        #expect(unset.status == 1)
        #expect(unset.stderr.contains("no token labelled '\(plugin.tokenLabel)'"), "\(unset.stderr)")
        #expect(unset.stderr.contains("SOFTHSM2_CONF is not set"), "\(unset.stderr)")
        #expect(unset.stderr.contains("softhsm-conf"), "\(unset.stderr)")

        // A SoftHSM config without this token (a node that has not received the copy): the conf, its token
        // directory and the copy instruction are named.
        let other = try SoftHSMFixture(name: "conf-other")
        defer { try? FileManager.default.removeItem(at: other.root) }
        let elsewhere = try Self.p11kms(["serve", "--config", config, "--softhsm-conf", other.configPath, "--listen",
                                         "unix://\(plugin.hsm.root.path)/never.sock", "--http-listen", "off"],
                                        environment: Self.bareEnvironment())
        #expect(elsewhere.status == 1)
        #expect(elsewhere.stderr.contains("SOFTHSM2_CONF=\(other.configPath) (softhsm-conf, from flag)"), "\(elsewhere.stderr)")
        #expect(elsewhere.stderr.contains("token directory \(other.tokenDirectory.path)"), "\(elsewhere.stderr)")
        #expect(elsewhere.stderr.contains("copy \(plugin.pinFile) and the token directory \(other.tokenDirectory.path) from the node that holds it"),
                "\(elsewhere.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "\(plugin.hsm.root.path)/never.sock"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: other.tokenDirectory.path).isEmpty, "no token was created")
    }

    @Test("the flag and the environment twin work like the file key; an unreadable conf is refused by name")
    func flagAndEnvironmentTwin() throws {
        let plugin = try PluginProcess(name: "conf-twin")
        let config = try Self.writeConfig(plugin, softhsmConf: nil)
        let byFlag = try Self.p11kms(["keys", "--config", config, "--softhsm-conf", plugin.hsm.configPath], environment: Self.bareEnvironment())
        #expect(byFlag.status == 0 && byFlag.stdout.contains(plugin.initialKeyID), "\(byFlag.stderr)")
        let byEnv = try Self.p11kms(["keys", "--config", config], environment: Self.bareEnvironment(["P11KMS_SOFTHSM_CONF": plugin.hsm.configPath]))
        #expect(byEnv.status == 0 && byEnv.stdout.contains(plugin.initialKeyID), "\(byEnv.stderr)")

        let missing = try Self.p11kms(["init", "--config", config], environment: Self.bareEnvironment(["P11KMS_SOFTHSM_CONF": "/nonexistent/softhsm2.conf"]))
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("cannot read the SoftHSM config file /nonexistent/softhsm2.conf (softhsm-conf, from environment P11KMS_SOFTHSM_CONF)"),
                "\(missing.stderr)")

        let printed = try Self.p11kms(["serve", "--config", config, "--print-config"], environment: Self.bareEnvironment(["P11KMS_SOFTHSM_CONF": plugin.hsm.configPath]))
        #expect(printed.stdout.contains("softhsm-conf: \(plugin.hsm.configPath)  # environment P11KMS_SOFTHSM_CONF"), "\(printed.stdout)")
    }
}

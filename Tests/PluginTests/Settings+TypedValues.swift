import Foundation
import Testing
import TestSupport

/// The config file is read by the text of each value, not by YAML 1.1's implicit types: the real binary,
/// `serve --print-config` and a real `serve` whose socket mode is checked with stat.
@Suite("Settings: config values keep their written text")
struct SettingsTypedValuesTests {
    func printConfig(_ plugin: PluginProcess, _ yaml: String, _ extra: [String] = [],
                     environment: [String: String] = [:]) throws -> Command.Result {
        let path = plugin.hsm.root.appendingPathComponent("config-\(UInt32.random(in: 0...UInt32.max)).yaml").path
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return try plugin.run(["serve", "--config", path, "--print-config"] + extra, environment: environment)
    }

    func line(_ result: Command.Result, _ key: String) -> String? {
        result.stdout.split(separator: "\n").first { $0.hasPrefix("\(key): ") }.map { String($0.split(separator: "#")[0]).trimmingCharacters(in: .whitespaces) }
    }

    @Test("socket-mode: 0660 unquoted, quoted, as a flag and from the environment all mean 0660, shown in octal")
    func octalModes() throws {
        let plugin = try PluginProcess(name: "cfgmode", initialize: false)
        let unquoted = try printConfig(plugin, "socket-mode: 0660\n")
        #expect(unquoted.status == 0, "\(unquoted.stderr)")
        #expect(line(unquoted, "socket-mode") == "socket-mode: 0660")
        #expect(line(try printConfig(plugin, "socket-mode: \"0660\"\n"), "socket-mode") == "socket-mode: 0660")
        #expect(line(try printConfig(plugin, "socket-mode: '0660'\n"), "socket-mode") == "socket-mode: 0660")
        #expect(line(try printConfig(plugin, "", ["--socket-mode", "0660"]), "socket-mode") == "socket-mode: 0660")
        #expect(line(try printConfig(plugin, "", ["--socket-mode", "660"]), "socket-mode") == "socket-mode: 0660")
        #expect(line(try printConfig(plugin, "", environment: ["P11KMS_SOCKET_MODE": "0660"]), "socket-mode") == "socket-mode: 0660")
        // JSON: a quoted string as well.
        #expect(line(try printConfig(plugin, "{\"socket-mode\": \"0660\"}"), "socket-mode") == "socket-mode: 0660")
    }

    @Test("a real serve from 'socket-mode: 0660' (unquoted) creates its socket with mode 0660")
    func servedMode() throws {
        let plugin = try PluginProcess(name: "cfgserve")
        let config = plugin.hsm.root.appendingPathComponent("config.yaml").path
        try """
        token-label: \(plugin.tokenLabel)
        pin-file: \(plugin.pinFile)
        socket-mode: 0660
        http-listen: off
        """.write(toFile: config, atomically: true, encoding: .utf8)
        try plugin.start(["--config", config])
        var st = stat()
        #expect(lstat(plugin.socketPath, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o660, "mode \(String(st.st_mode & 0o777, radix: 8))")
        #expect(try plugin.client().status().healthz == "ok")
        #expect(plugin.stop() == 0)
    }

    @Test("http-listen: off stays off, token-label: 0123 stays 0123, yes/no and null read as written")
    func scalarsAsWritten() throws {
        let plugin = try PluginProcess(name: "cfgtext", initialize: false)
        let result = try printConfig(plugin, """
        http-listen: off
        token-label: 0123
        disable-v1: yes
        socket-group: ~
        log-level:
        max-sessions: 010
        """)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(line(result, "http-listen") == "http-listen: off")
        #expect(line(result, "token-label") == "token-label: 0123")
        #expect(line(result, "disable-v1") == "disable-v1: yes")
        #expect(line(result, "socket-group") == "socket-group: ~")
        #expect(result.stdout.contains("log-level: info  # default"))
        #expect(line(result, "max-sessions") == "max-sessions: 010")
        // A serve from that file gets past every setting to the token (label "0123" is looked up as written).
        let config = plugin.hsm.root.appendingPathComponent("serve.yaml").path
        try "token-label: 0123\nhttp-listen: off\npin-file: \(plugin.pinFile)\n".write(toFile: config, atomically: true, encoding: .utf8)
        let serve = try plugin.run(["serve", "--listen", plugin.listen, "--config", config])
        #expect(serve.status == 1)
        #expect(serve.stderr.contains("no token labelled '0123'"), "\(serve.stderr)")
    }

    @Test("a map or a list where a value belongs, an unknown key or a repeated key is refused with the key and an example")
    func wrongShapes() throws {
        let plugin = try PluginProcess(name: "cfgshape", initialize: false)
        let map = try printConfig(plugin, "socket-mode:\n  mode: 0660\n")
        #expect(map.status != 0)
        #expect(map.stderr.contains("setting \"socket-mode\"") && map.stderr.contains("is a map") && map.stderr.contains("e.g. socket-mode: 0660"), "\(map.stderr)")
        let list = try printConfig(plugin, "listen: [a, b]\n")
        #expect(list.status != 0)
        #expect(list.stderr.contains("setting \"listen\"") && list.stderr.contains("is a list") && list.stderr.contains("e.g. listen: "), "\(list.stderr)")
        let unknown = try printConfig(plugin, "socket_mode: 0660\n")
        #expect(unknown.status != 0 && unknown.stderr.contains("unknown setting \"socket_mode\""), "\(unknown.stderr)")
        let twice = try printConfig(plugin, "log-level: info\nlog-level: debug\n")
        #expect(twice.status != 0 && twice.stderr.contains("duplicated key(s): 'log-level'"), "\(twice.stderr)")
        let notMap = try printConfig(plugin, "- socket-mode\n")
        #expect(notMap.status != 0 && notMap.stderr.contains("must be a map of settings"), "\(notMap.stderr)")
        // A value of the right shape but the wrong type: named, with an example, and nothing starts.
        let badMode = try plugin.run(["serve", "--listen", plugin.listen, "--socket-mode", "0999", "--http-listen", "off"] + plugin.tokenArguments)
        #expect(badMode.status != 0 && badMode.stderr.contains("socket-mode must be octal permission bits, e.g. socket-mode: \"0660\""), "\(badMode.stderr)")
        #expect(!FileManager.default.fileExists(atPath: plugin.socketPath))
        let badThreads = try plugin.run(["serve", "--listen", plugin.listen, "--worker-threads", "many", "--http-listen", "off"] + plugin.tokenArguments)
        #expect(badThreads.status != 0 && badThreads.stderr.contains("worker-threads must be a whole number") && badThreads.stderr.contains("e.g. worker-threads: 4"))
    }
}

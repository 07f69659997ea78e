import Foundation
import GRPCTransport
import Testing
import TestSupport

/// A free loopback TCP port for a plugin's HTTP listener.
func freePort() -> Int { LoopbackHTTP.freePort() }

/// A plain HTTP/1.1 GET over a real TCP connection; returns status and body.
func httpGet(port: Int, path: String) throws -> (status: Int, body: String) { try LoopbackHTTP.get(port: port, path: path) }

final class OutcomeBox: @unchecked Sendable {
    // Written once by the calling thread before it signals; read after the wait.
    private var value: Result<String, any Error>?
    private let lock = NSLock()
    func set(_ result: Result<String, any Error>) { lock.lock(); value = result; lock.unlock() }
    func get() -> Result<String, any Error>? { lock.lock(); defer { lock.unlock() }; return value }
}

func metricValue(_ metrics: String, _ series: String) -> Double? {
    for line in metrics.split(separator: "\n") where line.hasPrefix(series + " ") {
        return Double(line.dropFirst(series.count + 1))
    }
    return nil
}

func waitUntil(_ timeout: TimeInterval, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(100_000)
    }
    return try condition()
}

@Suite("Operations: health, metrics, outages, configuration")
struct OperationsTests {
    @Test("/livez, /readyz, /healthz and /metrics over real sockets; counters move with real requests")
    func endpoints() throws {
        let plugin = try PluginProcess(name: "http")
        let port = freePort()
        try plugin.start(["--http-listen", "127.0.0.1:\(port)"])
        #expect(try httpGet(port: port, path: "/livez").status == 200)
        #expect(try httpGet(port: port, path: "/readyz").status == 200)
        #expect(try httpGet(port: port, path: "/healthz") == (200, "ok\n"))
        #expect(try httpGet(port: port, path: "/nope").status == 404)
        let before = try httpGet(port: port, path: "/metrics").body
        let series = "p11kms_operations_total{method=\"Encrypt\",outcome=\"success\"}"
        let invalid = "p11kms_operations_total{method=\"Decrypt\",outcome=\"invalid_input\"}"
        let client = try plugin.client()
        for _ in 0..<5 {
            let response = try client.encrypt(randomBytes(32))
            _ = try client.decrypt(response.ciphertext, keyID: response.keyID)
        }
        expectStatus(.invalidArgument) { _ = try client.decrypt(Data([1, 2, 3]), keyID: plugin.initialKeyID) }
        let after = try httpGet(port: port, path: "/metrics").body
        #expect((metricValue(after, series) ?? 0) - (metricValue(before, series) ?? 0) == 5)
        #expect((metricValue(after, invalid) ?? 0) - (metricValue(before, invalid) ?? 0) == 1)
        #expect(metricValue(after, "p11kms_token_healthy") == 1)
        #expect(metricValue(after, "p11kms_root_keys{state=\"current\"}") == 1)
        #expect(metricValue(after, "p11kms_root_key_operations_total{key_id=\"\(plugin.initialKeyID)\",operation=\"encrypt\"}") == 5)
        #expect(after.contains("p11kms_operation_duration_seconds_bucket"))
        #expect(!after.contains(SoftHSMFixture.userPIN))
    }

    @Test("a real token outage: Status, /readyz and 'p11kms status' turn unhealthy, /livez stays ok, all recover without a restart")
    func outage() throws {
        let plugin = try PluginProcess(name: "outage")
        let port = freePort()
        try plugin.start(["--http-listen", "127.0.0.1:\(port)", "--probe-interval", "0.5"])
        let client = try plugin.client()
        let seed = randomBytes(32)
        let wrapped = try client.encrypt(seed)
        let away = plugin.hsm.root.appendingPathComponent("tokens.away")
        try FileManager.default.moveItem(at: plugin.hsm.tokenDirectory, to: away)
        #expect(try waitUntil(10) { try client.status().healthz != "ok" })
        let status = try client.status()
        #expect(status.healthz.contains("unavailable"))
        #expect(!status.healthz.contains(SoftHSMFixture.userPIN))
        #expect(try httpGet(port: port, path: "/readyz").status == 503)
        #expect(try httpGet(port: port, path: "/livez").status == 200)
        #expect(try plugin.run(["status", "--listen", plugin.listen]).status == 1)
        // Requests fail with unavailable, never a wrong answer and never invalidArgument.
        expectStatus(.unavailable) { _ = try client.encrypt(seed) }
        expectStatus(.unavailable) { _ = try client.decrypt(wrapped.ciphertext, keyID: wrapped.keyID) }

        try FileManager.default.moveItem(at: away, to: plugin.hsm.tokenDirectory)
        #expect(try waitUntil(15) { try client.status().healthz == "ok" })
        #expect(try httpGet(port: port, path: "/readyz").status == 200)
        #expect(try plugin.run(["status", "--listen", plugin.listen]).status == 0)
        #expect(try client.decrypt(wrapped.ciphertext, keyID: wrapped.keyID) == seed)
        #expect(plugin.process?.isRunning == true)
        #expect(plugin.log.contains("token unhealthy") && plugin.log.contains("token healthy again"))
    }

    @Test("a wrong PIN: exactly one C_Login, a clear error, non-zero exit")
    func wrongPIN() throws {
        let plugin = try PluginProcess(name: "badpin")
        let root = try TemporaryDirectory.make(prefix: "badpin-log")
        let log = root.appendingPathComponent("calls.log").path
        let plan = root.appendingPathComponent("plan").path
        _ = FileManager.default.createFile(atPath: plan, contents: Data())
        let badPIN = try plugin.hsm.writePINFile("0000-wrong")
        let result = try plugin.run(
            ["serve", "--listen", plugin.listen, "--module", FaultModule.path, "--token-label", plugin.tokenLabel,
             "--pin-file", badPIN, "--http-listen", "off"],
            environment: ["FAULTPKCS11_MODULE": SoftHSMFixture.modulePath, "FAULTPKCS11_LOG": log, "FAULTPKCS11_CONTROL": plan])
        #expect(result.status != 0)
        #expect(result.stderr.contains("rejected the PIN"))
        #expect(!result.stderr.contains("0000-wrong"))
        let logins = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").filter { $0.contains(" C_Login ") }
        #expect(logins.count == 1)
        #expect(!FileManager.default.fileExists(atPath: plugin.socketPath))
    }

    @Test("fails fast on a wrong module path, an unknown token label and a socket served by a live process")
    func failFast() throws {
        let plugin = try PluginProcess(name: "fast")
        let badModule = try plugin.run(["serve", "--listen", plugin.listen, "--module", "/nonexistent/lib.so",
                                        "--token-label", plugin.tokenLabel, "--pin-file", plugin.pinFile, "--http-listen", "off"])
        #expect(badModule.status == 1 && badModule.stderr.contains("cannot load PKCS#11 module"))
        let badLabel = try plugin.run(["serve", "--listen", plugin.listen, "--token-label", "nope", "--pin-file", plugin.pinFile, "--http-listen", "off"])
        #expect(badLabel.status == 1 && badLabel.stderr.contains("no token labelled 'nope'"))
        try plugin.start(["--http-listen", "off"])
        let second = try plugin.run(["serve", "--listen", plugin.listen] + plugin.tokenArguments + ["--http-listen", "off"])
        #expect(second.status == 1 && second.stderr.contains("live process"))
        #expect(try plugin.client().status().healthz == "ok")
        // A stale socket file from a dead process is replaced.
        #expect(plugin.stop(signal: SIGKILL) != 0)
        #expect(FileManager.default.fileExists(atPath: plugin.socketPath))
        try plugin.start(["--http-listen", "off"])
        #expect(try plugin.client().status().healthz == "ok")
        // SIGTERM removes the socket.
        #expect(plugin.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: plugin.socketPath))
    }

    @Test("SIGTERM lets an in-flight call finish (bounded drain), then removes the socket")
    func gracefulDrain() throws {
        let plugin = try PluginProcess(name: "drain")
        let root = try TemporaryDirectory.make(prefix: "drain-plan")
        let plan = root.appendingPathComponent("plan").path
        let calls = root.appendingPathComponent("calls.log").path
        _ = FileManager.default.createFile(atPath: plan, contents: Data())
        // The token answers C_Encrypt only after 1.5 s: the call is in flight when SIGTERM arrives.
        try plugin.start(["--module", FaultModule.path, "--shutdown-grace", "5", "--canary-interval", "600"],
                         environment: ["FAULTPKCS11_MODULE": SoftHSMFixture.modulePath, "FAULTPKCS11_CONTROL": plan,
                                       "FAULTPKCS11_LOG": calls])
        let client = try plugin.client()
        _ = try client.status()
        try "delay C_Encrypt 1500\n".write(toFile: plan, atomically: true, encoding: .utf8)
        func encryptInits() -> Int {
            ((try? String(contentsOfFile: calls, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains(" C_EncryptInit ") }.count
        }
        let before = encryptInits()
        let seed = randomBytes(32)
        // The slow call runs on a thread of its own (not a task: the cooperative pool may be busy with other tests).
        let outcome = OutcomeBox()
        let finished = DispatchSemaphore(value: 0)
        Thread {
            outcome.set(Result { try client.encrypt(seed).keyID })
            finished.signal()
        }.start()
        // SIGTERM only once the request is inside the token (its C_EncryptInit has returned).
        #expect(waitUntil(10) { encryptInits() > before })
        let pid = try #require(plugin.process?.processIdentifier)
        kill(pid, SIGTERM)
        #expect(finished.wait(timeout: .now() + 10) == .success)
        let keyID = try #require(outcome.get()).get()
        #expect(keyID == plugin.initialKeyID)
        #expect(plugin.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: plugin.socketPath))
        #expect(plugin.log.contains("shutting down") && plugin.log.contains("stopped"))
    }

    @Test("settings: flags beat environment beat the config file; --print-config redacts the PIN")
    func configuration() throws {
        let plugin = try PluginProcess(name: "config")
        let config = plugin.hsm.root.appendingPathComponent("config.yaml").path
        try """
        token-label: \(plugin.tokenLabel)
        pin-file: \(plugin.pinFile)
        log-level: debug
        worker-threads: 3
        socket-mode: "0640"
        http-listen: "127.0.0.1:1"
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let printed = try plugin.run(["serve", "--config", config, "--worker-threads", "2", "--print-config"],
                                     environment: ["P11KMS_LOG_LEVEL": "warning", "P11KMS_PIN": "env-secret-pin", "P11KMS_HTTP_LISTEN": "off"])
        #expect(printed.status == 0)
        let lines = printed.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains("worker-threads: 2  # flag"))
        #expect(lines.contains("log-level: warning  # environment P11KMS_LOG_LEVEL"))
        #expect(lines.contains("http-listen: off  # environment P11KMS_HTTP_LISTEN"))
        #expect(lines.contains("socket-mode: 0640  # file \(config)"))
        #expect(lines.contains("token-label: \(plugin.tokenLabel)  # file \(config)"))
        #expect(lines.contains("status-version: v2  # default"))
        #expect(!printed.stdout.contains("env-secret-pin"))
        #expect(!printed.stdout.contains(SoftHSMFixture.userPIN))
        // JSON works too, and the file drives a real serve (socket mode from the file).
        let json = plugin.hsm.root.appendingPathComponent("config.json").path
        try "{\"token-label\": \"\(plugin.tokenLabel)\", \"pin-file\": \"\(plugin.pinFile)\", \"socket-mode\": \"0640\", \"http-listen\": \"off\"}"
            .write(toFile: json, atomically: true, encoding: .utf8)
        try plugin.start(["--config", json])
        var st = stat()
        #expect(lstat(plugin.socketPath, &st) == 0 && st.st_mode & 0o777 == 0o640)
        // Unknown keys and a PIN in the file are refused.
        try "token-label: x\npin: 1234\n".write(toFile: config, atomically: true, encoding: .utf8)
        let withPIN = try plugin.run(["serve", "--config", config, "--print-config"])
        #expect(withPIN.status != 0 && withPIN.stderr.contains("must not hold the PIN"))
        try "token-lable: x\n".write(toFile: config, atomically: true, encoding: .utf8)
        #expect(try plugin.run(["serve", "--config", config, "--print-config"]).stderr.contains("unknown setting"))
    }

    @Test("--socket-mode and --socket-group set the socket's permissions; an unknown group fails start-up")
    func socketGroup() throws {
        let plugin = try PluginProcess(name: "group")
        let group = try #require(getgrgid(getegid())).pointee
        let groupName = String(cString: group.gr_name)
        try plugin.start(["--socket-mode", "0660", "--socket-group", groupName])
        var st = stat()
        #expect(lstat(plugin.socketPath, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o660)
        #expect(st.st_gid == group.gr_gid)
        #expect(plugin.stop() == 0)
        let bad = try plugin.run(["serve", "--listen", plugin.listen, "--socket-group", "no-such-group-p11kms", "--http-listen", "off"] + plugin.tokenArguments)
        #expect(bad.status == 1 && bad.stderr.contains("unknown group"))
        #expect(!FileManager.default.fileExists(atPath: plugin.socketPath))
    }

    @Test("an abstract socket (unix:///@name, as kube-apiserver writes it) serves, and a second server on it is refused")
    func abstractSocket() throws {
        let plugin = try PluginProcess(name: "abstract")
        let name = "p11kms-test-\(UInt32.random(in: 0...UInt32.max))"
        let serve = Process()
        serve.executableURL = URL(fileURLWithPath: PluginProcess.executable)
        serve.arguments = ["serve", "--listen", "unix:///@\(name)", "--allow-abstract-socket", "--http-listen", "off"] + plugin.tokenArguments
        serve.environment = plugin.environment
        serve.standardError = FileHandle.nullDevice
        try serve.run()
        ChildProcesses.register(serve.processIdentifier)
        defer { serve.terminate(); serve.waitUntilExit() }
        #expect(try waitUntil(10) { try plugin.run(["status", "--listen", "unix:///@\(name)"]).status == 0 })
        let second = try plugin.run(["serve", "--listen", "unix:///@\(name)", "--allow-abstract-socket", "--http-listen", "off"]
                                    + plugin.tokenArguments)
        #expect(second.status == 1)
        #expect(serve.isRunning)
    }

    @Test("JSON logs: one object per line with request lines at debug, no secrets")
    func jsonLogs() throws {
        let plugin = try PluginProcess(name: "jsonlog")
        try plugin.start(["--log-format", "json", "--log-level", "debug", "--http-listen", "off"])
        let client = try plugin.client()
        let marker = Array("SECRET-PLAINTEXT-MARKER".utf8)
        let response = try client.encrypt(marker)
        _ = try client.decrypt(response.ciphertext, keyID: response.keyID)
        usleep(200_000)
        let lines = plugin.log.split(separator: "\n").filter { $0.hasPrefix("{") }
        #expect(lines.count >= 3)
        for line in lines {
            #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) is [String: Any], "\(line)")
        }
        #expect(lines.contains { $0.contains("\"msg\":\"encrypt\"") && $0.contains(response.keyID) })
        #expect(!plugin.log.contains("SECRET-PLAINTEXT-MARKER"))
        #expect(!plugin.log.contains(SoftHSMFixture.userPIN))
    }
}

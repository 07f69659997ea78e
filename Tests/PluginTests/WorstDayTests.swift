import Dispatch
import Foundation
import GRPCTransport
import Testing
import TestSupport

/// Runs `body` on `count` threads of their own (not the cooperative pool) and waits for all of them.
func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for index in 0..<count {
        group.enter()
        Thread {
            body(index)
            group.leave()
        }.start()
    }
    group.wait()
}

/// The gRPC code a call ended with (`ok` when it succeeded).
func callCode(_ body: () throws -> Void) -> GRPCStatusCode {
    do {
        try body()
        return .ok
    } catch let status as GRPCStatus {
        return status.code
    } catch {
        return .unknown
    }
}

/// Codes collected from many threads.
final class CodeTally: @unchecked Sendable {
    // Guarded by `lock`.
    private var codes: [GRPCStatusCode] = []
    private let lock = NSLock()
    func add(_ code: GRPCStatusCode) { lock.lock(); codes.append(code); lock.unlock() }
    func count(_ code: GRPCStatusCode) -> Int { lock.lock(); defer { lock.unlock() }; return codes.filter { $0 == code }.count }
    var all: [GRPCStatusCode] { lock.lock(); defer { lock.unlock() }; return codes }
}

func seconds(since start: ContinuousClock.Instant) -> Double {
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
}

@Suite("Worst day: a hung token, overload, shutdown with a deadline", .serialized)
struct WorstDayTests {
    @Test("a hung token: Status, /readyz and 'p11kms status' go unhealthy within the stale bound and answer at once; expired calls never run; recovery without restart")
    func hungToken() throws {
        let plugin = try PluginProcess(name: "hang")
        let port = freePort()
        // TokenHang blocks SoftHSM on the token's object files; a session copy of the key is never read from a
        // file, so the hang would not reach Encrypt. Token objects only: every call hangs, as on a stuck HSM.
        try plugin.start(["--http-listen", "127.0.0.1:\(port)", "--probe-interval", "0.5", "--worker-threads", "2",
                          "--session-key-copies=false"])
        let client = try plugin.client()
        let seed = randomBytes(32)
        let wrapped = try client.encrypt(seed)
        let folder = try #require(plugin.hsm.tokenFolder(label: plugin.tokenLabel))
        let metricsBefore = try httpGet(port: port, path: "/metrics").body
        let successBefore = metricValue(metricsBefore, "p11kms_operations_total{method=\"Encrypt\",outcome=\"success\"}") ?? 0

        let hang = try TokenHang(tokenFolder: folder)
        let hungAt = ContinuousClock.now
        // Calls with a short deadline: two block inside the token (one per worker), the rest wait and expire.
        let tally = CodeTally()
        onThreads(8) { _ in tally.add(callCode { _ = try client.encrypt(seed, timeout: .seconds(1)) }) }
        #expect(tally.count(.deadlineExceeded) == 8, "codes: \(tally.all)")

        // Stale bound: 3 x 0.5 s. Status answers from the health state, however stuck the workers are.
        #expect(try waitUntil(10) { try client.status().healthz.contains("not answering") })
        let detected = seconds(since: hungAt)
        let asked = ContinuousClock.now
        let status = try client.status()
        #expect(seconds(since: asked) < 1, "Status must not wait on the token")
        #expect(status.healthz.hasPrefix("token not answering for "))
        #expect(status.keyID == plugin.initialKeyID)
        let ready = try httpGet(port: port, path: "/readyz")
        #expect(ready.status == 503 && ready.body.contains("not answering"))
        #expect(try httpGet(port: port, path: "/livez").status == 200)
        #expect(try plugin.run(["status", "--listen", plugin.listen]).status == 1)
        let during = try httpGet(port: port, path: "/metrics").body
        #expect(metricValue(during, "p11kms_token_healthy") == 0)
        #expect((metricValue(during, "p11kms_token_last_success_age_seconds") ?? 0) > 1)
        #expect((metricValue(during, "p11kms_workers_in_token") ?? 0) >= 1)
        print("hung token detected after \(detected) s")

        hang.release()
        let releasedAt = ContinuousClock.now
        #expect(try waitUntil(10) { try client.status().healthz == "ok" })
        print("healthy again \(seconds(since: releasedAt)) s after the token answered")
        #expect(seconds(since: releasedAt) < 5)
        #expect(try client.decrypt(wrapped.ciphertext, keyID: wrapped.keyID) == seed)
        #expect(try httpGet(port: port, path: "/readyz").status == 200)
        // The calls that expired while they waited were never run afterwards: only those already inside the token
        // (at most one per worker) completed.
        usleep(500_000)
        let after = try httpGet(port: port, path: "/metrics").body
        let successAfter = metricValue(after, "p11kms_operations_total{method=\"Encrypt\",outcome=\"success\"}") ?? 0
        #expect(successAfter - successBefore <= 2, "\(successAfter - successBefore) expired Encrypts ran after the hang")
        #expect((metricValue(after, "p11kms_requests_expired_total{method=\"Encrypt\"}") ?? 0) >= 6)
        #expect(waitUntil(5) { plugin.log.contains("token unhealthy") && plugin.log.contains("not answering") }, "\(plugin.log)")
        #expect(waitUntil(5) { plugin.log.contains("token healthy again") })
    }

    @Test("SIGTERM with a hung token: the process exits within grace + 1 s and removes its socket")
    func shutdownDuringHang() throws {
        let plugin = try PluginProcess(name: "hangstop")
        // Token objects only, as in `hungToken`: the file-lock hang does not reach a session copy.
        try plugin.start(["--shutdown-grace", "2", "--probe-interval", "0.5", "--session-key-copies=false"])
        let client = try plugin.client()
        let folder = try #require(plugin.hsm.tokenFolder(label: plugin.tokenLabel))
        let hang = try TokenHang(tokenFolder: folder)
        defer { hang.release() }
        // Put calls inside the token, then ask the plugin to stop.
        let tally = CodeTally()
        let callers = DispatchGroup()
        for _ in 0..<3 {
            callers.enter()
            Thread {
                tally.add(callCode { _ = try client.encrypt(randomBytes(32), timeout: .seconds(30)) })
                callers.leave()
            }.start()
        }
        usleep(500_000)
        let pid = try #require(plugin.process?.processIdentifier)
        let signalled = ContinuousClock.now
        kill(pid, SIGTERM)
        let status = plugin.stop()
        let took = seconds(since: signalled)
        print("exit \(took) s after SIGTERM with a hung token (grace 2 s)")
        #expect(took < 3 + 1.5, "grace 2 s + 1 s, with a margin for a loaded machine")
        #expect(status == 0)
        #expect(!FileManager.default.fileExists(atPath: plugin.socketPath))
        callers.wait()
        #expect(tally.count(.ok) == 0)
        #expect(plugin.log.contains("stopped with work still inside the token"))
    }

    @Test("overload against a slow token: calls beyond the queue fail fast with RESOURCE_EXHAUSTED, Status still answers")
    func overload() throws {
        let plugin = try PluginProcess(name: "overload")
        let root = try TemporaryDirectory.make(prefix: "overload-plan")
        let plan = root.appendingPathComponent("plan").path
        _ = FileManager.default.createFile(atPath: plan, contents: Data())
        let port = freePort()
        try plugin.start(["--module", FaultModule.path, "--worker-threads", "2", "--max-sessions", "2",
                          "--max-queued-calls", "4", "--canary-interval", "600", "--http-listen", "127.0.0.1:\(port)"],
                         environment: ["FAULTPKCS11_MODULE": SoftHSMFixture.modulePath, "FAULTPKCS11_CONTROL": plan,
                                       "FAULTPKCS11_LOG": root.appendingPathComponent("calls.log").path])
        let client = try plugin.client()
        try "delay C_Encrypt 200\n".write(toFile: plan, atomically: true, encoding: .utf8)
        let tally = CodeTally()
        let statusTimes = CodeTally()
        let done = DispatchSemaphore(value: 0)
        Thread {
            onThreads(40) { _ in tally.add(callCode { _ = try client.encrypt(randomBytes(32), timeout: .seconds(20)) }) }
            done.signal()
        }.start()
        // While the queue is full, Status answers quickly from its own lane.
        var statusSlow = 0
        for _ in 0..<10 {
            let asked = ContinuousClock.now
            if (try? client.status()) == nil || seconds(since: asked) > 1 { statusSlow += 1 }
            statusTimes.add(.ok)
            usleep(100_000)
        }
        let metrics = try httpGet(port: port, path: "/metrics").body
        #expect(done.wait(timeout: .now() + 60) == .success)
        #expect(statusSlow == 0)
        #expect(tally.count(.resourceExhausted) > 0, "codes: \(tally.all)")
        // At least the queue's four complete (more when a worker takes a call before the burst fills the queue).
        #expect(tally.count(.ok) >= 4, "queued calls still complete: \(tally.all)")
        #expect(tally.count(.ok) + tally.count(.resourceExhausted) == 40, "codes: \(tally.all)")
        #expect((metricValue(metrics, "p11kms_request_queue_depth") ?? 99) <= 4)
        #expect(metricValue(metrics, "p11kms_request_queue_capacity") == 4)
        let after = try httpGet(port: port, path: "/metrics").body
        #expect(metricValue(after, "p11kms_requests_rejected_total{method=\"Encrypt\"}") == Double(tally.count(.resourceExhausted)))
        #expect(plugin.process?.isRunning == true)
    }

    @Test("sockets: abstract only with --allow-abstract-socket and never with a mode; a world-writable directory is refused; SIGHUP stops cleanly")
    func socketRules() throws {
        let plugin = try PluginProcess(name: "sockrules")
        let abstract = "unix:///@p11kms-rules-\(getpid())"
        let refused = try plugin.run(["serve", "--listen", abstract] + plugin.tokenArguments + ["--http-listen", "off"])
        #expect(refused.status == 1 && refused.stderr.contains("--allow-abstract-socket"))
        let withMode = try plugin.run(["serve", "--listen", abstract, "--allow-abstract-socket", "--socket-mode", "0660"]
                                      + plugin.tokenArguments + ["--http-listen", "off"])
        #expect(withMode.status == 1 && withMode.stderr.contains("abstract"))

        let open = plugin.hsm.root.appendingPathComponent("open")
        try FileManager.default.createDirectory(at: open, withIntermediateDirectories: true)
        chmod(open.path, 0o777)
        let worldWritable = try plugin.run(["serve", "--listen", "unix://\(open.path)/kms.sock"] + plugin.tokenArguments
                                           + ["--http-listen", "off"])
        #expect(worldWritable.status == 1 && worldWritable.stderr.contains("writable by every user"))
        #expect(!FileManager.default.fileExists(atPath: open.appendingPathComponent("kms.sock").path))

        // The socket appears only after the first probe: its first Status is never "starting".
        try plugin.start(["--http-listen", "off"], waitHealthy: false)
        #expect(waitUntil(20) { FileManager.default.fileExists(atPath: plugin.socketPath) })
        #expect(try plugin.client().status().healthz == "ok")
        let pid = try #require(plugin.process?.processIdentifier)
        kill(pid, SIGHUP)
        #expect(plugin.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: plugin.socketPath))
        #expect(plugin.log.contains("SIGHUP"))
    }
}

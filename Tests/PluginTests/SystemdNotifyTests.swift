import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `p11kms serve` under systemd's `Type=notify`: it sends READY=1 to $NOTIFY_SOCKET only once Status answers
/// healthy, and STOPPING=1 when SIGTERM arrives. The test plays systemd's part with a datagram socket of its own.
@Suite("systemd readiness notification")
struct SystemdNotifyTests {
    @Test("READY=1 waits for a passing probe; STOPPING=1 on SIGTERM (socket path)")
    func readyOnlyWhenHealthy() throws {
        let plugin = try PluginProcess(name: "notify")
        let notify = try NotifySocket(abstract: false, folder: plugin.hsm.root)
        let plan = plugin.hsm.root.appendingPathComponent("plan").path
        // The token refuses AES-GCM at first: the first probe's canary fails, the plugin is up but unhealthy.
        try "fail C_EncryptInit CKR_GENERAL_ERROR\n".write(toFile: plan, atomically: true, encoding: .utf8)
        try plugin.start(["--module", FaultModule.path, "--probe-interval", "0.5"],
                         environment: ["NOTIFY_SOCKET": notify.address, "FAULTPKCS11_MODULE": SoftHSMFixture.modulePath,
                                       "FAULTPKCS11_CONTROL": plan],
                         waitHealthy: false)
        // For three seconds: the socket answers, Status says unhealthy, and systemd hears only why it waits.
        let unhealthyUntil = Date().addingTimeInterval(3)
        var heard: [String] = []
        while Date() < unhealthyUntil {
            if let message = notify.receive(timeout: 0.2) { heard.append(message) }
        }
        #expect(try plugin.client().status().healthz != "ok")
        #expect(!heard.isEmpty, "no STATUS= while waiting; log: \(plugin.log)")
        #expect(heard.allSatisfy { $0.hasPrefix("STATUS=waiting for the token: ") && !$0.contains("READY=1") }, "\(heard)")

        // The token recovers: READY=1 arrives, and Status is healthy the moment it does.
        try "".write(toFile: plan, atomically: true, encoding: .utf8)
        let ready = notify.receive(timeout: 15) { $0.contains("READY=1") }
        let ready1 = try #require(ready, "no READY=1; log: \(plugin.log)")
        let status = try plugin.client().status()
        #expect(status.healthz == "ok")
        #expect(ready1.split(separator: "\n").contains("READY=1"))
        #expect(ready1.contains("STATUS=serving; current key \(plugin.initialKeyID)"))
        // READY=1 is sent once.
        #expect(notify.receive(timeout: 1.5) { $0.contains("READY=1") } == nil)

        let stopped = DispatchSemaphore(value: 0)
        let exit = ExitBox()
        Thread { exit.set(plugin.stop()); stopped.signal() }.start()
        let stopping = notify.receive(timeout: 10) { $0.contains("STOPPING=1") }
        #expect(stopping == "STOPPING=1")
        #expect(stopped.wait(timeout: .now() + 20) == .success)
        #expect(exit.get() == 0)
    }

    @Test("an abstract NOTIFY_SOCKET (@name) gets READY=1 and STOPPING=1")
    func abstractSocket() throws {
        let plugin = try PluginProcess(name: "notify-abstract")
        let notify = try NotifySocket(abstract: true, folder: plugin.hsm.root)
        try plugin.start(environment: ["NOTIFY_SOCKET": notify.address], waitHealthy: false)
        let ready = try #require(notify.receive(timeout: 15) { $0.contains("READY=1") }, "no READY=1; log: \(plugin.log)")
        #expect(ready.hasPrefix("READY=1\n"))
        #expect(try plugin.client().status().healthz == "ok")
        kill(try #require(plugin.process).processIdentifier, SIGTERM)
        #expect(notify.receive(timeout: 10) { $0.contains("STOPPING=1") } == "STOPPING=1")
        #expect(plugin.stop() == 0)
    }
}

/// The receiving end of $NOTIFY_SOCKET: a unix datagram socket bound to a path or an abstract name.
final class NotifySocket {
    let fd: Int32
    /// The value for NOTIFY_SOCKET: the path, or `@name`.
    let address: String
    private let path: String?

    init(abstract: Bool, folder: URL) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw FixtureError("socket: \(errno)") }
        var name = Array((abstract ? "@p11kms-notify-\(UInt32.random(in: 0...UInt32.max))" : folder.appendingPathComponent("notify").path).utf8)
        address = String(decoding: name, as: UTF8.self)
        path = abstract ? nil : address
        if abstract { name[0] = 0 }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in name.enumerated() { raw[i] = b } }
        let length = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + name.count + (abstract ? 0 : 1)
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(length)) } }
        guard bound == 0 else { close(fd); throw FixtureError("bind \(address): \(errno)") }
    }

    deinit {
        close(fd)
        if let path { unlink(path) }
    }

    /// The next datagram within `timeout` seconds, or nil.
    func receive(timeout: Double) -> String? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(timeout * 1000)) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : nil
    }

    /// The first datagram within `timeout` seconds that satisfies `matching` (others are skipped).
    func receive(timeout: Double, matching: (String) -> Bool) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let message = receive(timeout: max(0.01, deadline.timeIntervalSinceNow)), matching(message) { return message }
        }
        return nil
    }
}

private final class ExitBox: @unchecked Sendable {
    // Written by the stopping thread before it signals, read after the wait.
    private var status: Int32 = -1
    private let lock = NSLock()
    func set(_ value: Int32) { lock.lock(); status = value; lock.unlock() }
    func get() -> Int32 { lock.lock(); defer { lock.unlock() }; return status }
}

#if canImport(Glibc)
import Glibc
#endif
import KeyService
import Synchronization

/// systemd's service notification protocol (sd_notify(3)) without libsystemd: each message is one datagram of
/// newline-separated `KEY=VALUE` assignments sent to the unix socket named by `NOTIFY_SOCKET`, a path or an abstract
/// name written with a leading `@`. Without `NOTIFY_SOCKET` (not started by systemd with `Type=notify`) every call
/// does nothing. Nothing is unset from the environment.
public enum SystemdNotifier {
    /// Sends `state` (e.g. `READY=1`, `STOPPING=1`, `STATUS=…`); returns whether a datagram went out.
    @discardableResult
    public static func notify(_ state: String) -> Bool {
        guard let value = getenv("NOTIFY_SOCKET") else { return false }
        return send(state, to: String(cString: value))
    }

    /// Sends `READY=1` once the plugin can serve: now if the health monitor's last probe passed, otherwise after the
    /// first probe that passes (the monitor keeps probing). Meant to be called right after the server started, when
    /// the socket is bound and the first probe has run; `STATUS=` tells `systemctl status` what it waits for.
    public static func notifyReadyWhenHealthy(_ monitor: HealthMonitor) {
        guard getenv("NOTIFY_SOCKET") != nil else { return }
        let ready = ReadyState()
        let report: @Sendable (Health) -> Void = { health in
            // Under the lock, so that no "waiting" status can follow READY=1.
            ready.update { sent in
                guard !sent else { return }
                if health.healthy {
                    sent = notify("READY=1\nSTATUS=serving; current key \(health.currentKeyID ?? "none")")
                } else {
                    notify("STATUS=waiting for the token: \(health.reason)")
                }
            }
        }
        monitor.onChange { health, _ in report(health) }
        report(monitor.health)
    }

    /// One datagram to `address` (a path, or `@name` for an abstract socket).
    static func send(_ state: String, to address: String) -> Bool {
        var bytes = Array(address.utf8)
        guard bytes.count > 1, bytes[0] == UInt8(ascii: "/") || bytes[0] == UInt8(ascii: "@") else { return false }
        var addr = sockaddr_un()
        guard bytes.count <= MemoryLayout.size(ofValue: addr.sun_path) - (bytes[0] == UInt8(ascii: "@") ? 0 : 1) else { return false }
        let abstract = bytes[0] == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        // An abstract name is exactly its bytes (no terminating NUL); a path includes the NUL.
        let length = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + bytes.count + (abstract ? 0 : 1)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let message = Array(state.utf8)
        let sent = withUnsafePointer(to: &addr) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                message.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), address, socklen_t(length)) }
            }
        }
        return sent == message.count
    }
}

/// Whether READY=1 went out, guarded by a lock.
private final class ReadyState: Sendable {
    private let sent = Mutex(false)

    func update(_ body: (inout Bool) -> Void) {
        sent.withLock { body(&$0) }
    }
}

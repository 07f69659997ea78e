import Foundation

/// A single-member etcd (Debian's `/usr/bin/etcd`) on 127.0.0.1 with free ports and a temporary data directory,
/// optionally requiring TLS client certificates made with `openssl`. Stopped (and its directory removed) by `stop()`
/// or on deinit.
public final class EtcdFixture {
    public static let binary = ProcessInfo.processInfo.environment["P11KMS_TEST_ETCD"] ?? "/usr/bin/etcd"
    public static let etcdctl = "/usr/bin/etcdctl"

    /// Certificates for a TLS fixture: a CA that signed etcd's server certificate and a client certificate, plus a
    /// second, unrelated CA and client certificate that etcd must refuse.
    public struct Certificates: Sendable {
        public let caFile: String
        public let clientCertFile: String
        public let clientKeyFile: String
        public let foreignCAFile: String
        public let foreignClientCertFile: String
        public let foreignClientKeyFile: String

        public func pem(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    }

    public let directory: URL
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    public let endpoint: String
    public let certificates: Certificates?
    private let process: Process
    private let logPath: String

    /// With `tls`, etcd requires a client certificate unless `clientCertAuth` is false (server TLS only, for
    /// password authentication over TLS).
    public init(tls: Bool = false, clientCertAuth: Bool = true, extraArguments: [String] = []) throws {
        directory = try TemporaryDirectory.make(prefix: "etcd")
        let clientPort = try FreePort.find()
        var peerPort = try FreePort.find()
        while peerPort == clientPort { peerPort = try FreePort.find() }
        let scheme = tls ? "https" : "http"
        endpoint = "\(scheme)://127.0.0.1:\(clientPort)"
        let peer = "http://127.0.0.1:\(peerPort)"
        certificates = tls ? try Self.makeCertificates(in: directory) : nil

        var arguments = [
            "--name", "default", "--data-dir", directory.appendingPathComponent("data").path,
            "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", "default=\(peer)",
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "info",
        ]
        if let certificates {
            let server = directory.appendingPathComponent("server").path
            if clientCertAuth { arguments += ["--client-cert-auth", "--trusted-ca-file", certificates.caFile] }
            arguments += ["--cert-file", server + ".pem", "--key-file", server + ".key"]
        }
        arguments += extraArguments
        logPath = directory.appendingPathComponent("etcd.log").path
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try? log.close()
        do {
            try waitUntilServing()
        } catch {
            stop()
            throw error
        }
    }

    deinit { stop() }

    /// Kills etcd and removes its directory. Idempotent.
    public func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: directory)
    }

    /// etcd's log so far (for failure messages).
    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Runs `etcdctl` (API v3) against this etcd with the fixture's client certificate, e.g. to set up auth.
    public func etcdctl(_ arguments: [String]) throws -> Command.Result {
        var full = ["--endpoints", endpoint]
        if let certificates {
            full += ["--cacert", certificates.caFile, "--cert", certificates.clientCertFile, "--key", certificates.clientKeyFile]
        }
        var environment = ProcessInfo.processInfo.environment
        environment["ETCDCTL_API"] = "3"
        return try Command.run(Self.etcdctl, full + arguments, environment: environment)
    }

    /// Creates user `root` with `password`, grants it the root role and turns authentication on.
    public func enableAuth(rootPassword password: String) throws {
        for step in [["user", "add", "root:\(password)"], ["user", "grant-role", "root", "root"], ["auth", "enable"]] {
            let result = try etcdctl(step)
            guard result.status == 0 else {
                throw FixtureError("etcdctl \(step.prefix(2).joined(separator: " ")) failed: \(result.stderr)")
            }
        }
    }

    private func waitUntilServing() throws {
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if !process.isRunning {
                throw FixtureError("etcd exited with status \(process.terminationStatus):\n\(log.suffix(3000))")
            }
            if log.contains("serving client traffic") { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw FixtureError("etcd did not start serving within 30 s:\n\(log.suffix(3000))")
    }

    private static func makeCertificates(in directory: URL) throws -> Certificates {
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
        func openssl(_ arguments: [String]) throws {
            let result = try Command.run("/usr/bin/openssl", arguments)
            guard result.status == 0 else { throw FixtureError("openssl \(arguments.first ?? "") failed: \(result.stderr)") }
        }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        func makeCA(_ name: String) throws {
            try openssl(["req", "-x509"] + ec + ["-keyout", path(name + ".key"), "-out", path(name + ".pem"),
                                                 "-days", "2", "-subj", "/CN=\(name)"])
        }
        func issue(_ name: String, ca: String, cn: String, extensions: String) throws {
            let ext = path(name + ".ext")
            try extensions.write(toFile: ext, atomically: true, encoding: .utf8)
            try openssl(["req"] + ec + ["-keyout", path(name + ".key"), "-out", path(name + ".csr"), "-subj", "/CN=\(cn)"])
            try openssl(["x509", "-req", "-in", path(name + ".csr"), "-CA", path(ca + ".pem"), "-CAkey", path(ca + ".key"),
                         "-CAcreateserial", "-out", path(name + ".pem"), "-days", "2", "-extfile", ext])
        }
        try makeCA("ca")
        try makeCA("foreign-ca")
        try issue("server", ca: "ca", cn: "etcd-server", extensions: """
            subjectAltName = IP:127.0.0.1, DNS:localhost
            extendedKeyUsage = serverAuth, clientAuth
            keyUsage = digitalSignature, keyEncipherment

            """)
        let clientExt = "extendedKeyUsage = clientAuth\nkeyUsage = digitalSignature, keyEncipherment\n"
        try issue("client", ca: "ca", cn: "root", extensions: clientExt)
        try issue("foreign-client", ca: "foreign-ca", cn: "root", extensions: clientExt)
        return Certificates(caFile: path("ca.pem"), clientCertFile: path("client.pem"), clientKeyFile: path("client.key"),
                            foreignCAFile: path("foreign-ca.pem"), foreignClientCertFile: path("foreign-client.pem"),
                            foreignClientKeyFile: path("foreign-client.key"))
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
public enum FreePort {
    public static func find() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FixtureError("socket() failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw -> Bool in
                bind(fd, raw, length) == 0 && getsockname(fd, raw, &length) == 0
            }
        }
        guard bound else { throw FixtureError("cannot bind a free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

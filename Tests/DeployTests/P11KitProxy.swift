import Foundation
import TestSupport

/// A SoftHSM token exported by a real `p11-kit server` on a unix socket, and p11kms commands run through
/// `p11-kit-client.so` (the proxy's client module) or straight at SoftHSM.
final class P11KitProxy: @unchecked Sendable {
    // The child processes are started and stopped by the one test that owns this fixture.
    static let serverBinary = "/usr/bin/p11-kit"
    static let clientModule = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
    static let pkcs11Tool = "/usr/bin/pkcs11-tool"

    static var available: Bool {
        [serverBinary, pkcs11Tool].allSatisfy(FileManager.default.isExecutableFile(atPath:))
            && FileManager.default.fileExists(atPath: clientModule)
    }

    /// Whether the installed p11-kit forwards CKM_AES_GCM (its parameters): from 0.25 on.
    static var forwardsAESGCM: Bool {
        guard let result = try? Command.run("/usr/bin/dpkg-query", ["-W", "-f=${Version}", "p11-kit"]), result.status == 0 else {
            return false
        }
        let parts = result.stdout.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard parts.count == 2 else { return false }
        return parts[0] > 0 || parts[1] >= 25
    }

    let hsm: SoftHSMFixture
    let tokenLabel: String
    let pinFile: String
    let proxySocket: String
    let kmsSocket: String
    private var server: Process?
    private let serverLog: String

    init(name: String) throws {
        hsm = try SoftHSMFixture(name: name)
        tokenLabel = SoftHSMFixture.uniqueLabel("proxy")
        try hsm.createToken(label: tokenLabel)
        pinFile = try hsm.writePINFile()
        proxySocket = hsm.root.appendingPathComponent("p11-kit.sock").path
        kmsSocket = hsm.root.appendingPathComponent("kms.sock").path
        serverLog = hsm.root.appendingPathComponent("p11-kit-server.log").path

        // Foreground, one token, on a socket of our own; it runs with the fixture's SOFTHSM2_CONF.
        let server = Process()
        server.executableURL = URL(fileURLWithPath: Self.serverBinary)
        server.arguments = ["server", "-f", "--provider", SoftHSMFixture.modulePath, "-n", proxySocket, "pkcs11:token=\(tokenLabel)"]
        server.environment = hsm.environment
        _ = FileManager.default.createFile(atPath: serverLog, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: serverLog))
        server.standardOutput = log
        server.standardError = log
        try server.run()
        self.server = server
        let deadline = Date().addingTimeInterval(10)
        while !Self.accepts(proxySocket) {
            guard server.isRunning, Date() < deadline else {
                stop()
                throw FixtureError("p11-kit server does not accept connections on its socket: \(self.log)")
            }
            usleep(20_000)
        }
    }

    /// Whether something accepts connections on the unix socket at `path`.
    static func accepts(_ path: String) -> Bool {
        guard FileManager.default.fileExists(atPath: path) else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: bytes + [0])
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return result == 0
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: hsm.root)
    }

    var log: String { (try? String(contentsOfFile: serverLog, encoding: .utf8)) ?? "" }

    func stop() {
        guard let server else { return }
        if server.isRunning { server.terminate() }
        server.waitUntilExit()
        self.server = nil
    }

    /// The environment of a p11kms that reaches the token only through the proxy: no SoftHSM config at all.
    var proxyEnvironment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["SOFTHSM2_CONF"] = nil
        env["P11KMS_PIN"] = nil
        env["P11_KIT_SERVER_ADDRESS"] = "unix:path=\(proxySocket)"
        return env
    }

    var proxyArguments: [String] { ["--module", Self.clientModule, "--token-label", tokenLabel, "--pin-file", pinFile] }

    /// A p11kms token command through the proxy.
    func p11kms(_ arguments: [String]) throws -> Command.Result {
        try Command.run(PluginProcess.executable, [arguments[0]] + proxyArguments + arguments.dropFirst(), environment: proxyEnvironment)
    }

    /// A p11kms token command straight at SoftHSM.
    func p11kmsDirect(_ arguments: [String]) throws -> Command.Result {
        try Command.run(PluginProcess.executable,
                        [arguments[0], "--module", SoftHSMFixture.modulePath, "--token-label", tokenLabel, "--pin-file", pinFile] + arguments.dropFirst(),
                        environment: hsm.environment)
    }

    /// `pkcs11-tool --list-objects` straight at SoftHSM (the PIN through the environment, not argv).
    func softHSMObjects(login: Bool) throws -> String {
        var env = hsm.environment
        env["P11KMS_TEST_PIN"] = SoftHSMFixture.userPIN
        var arguments = ["--module", SoftHSMFixture.modulePath, "--token-label", tokenLabel, "--list-objects"]
        if login { arguments += ["--login", "--pin", "env:P11KMS_TEST_PIN"] }
        let result = try Command.run(Self.pkcs11Tool, arguments, environment: env)
        guard result.status == 0 else { throw FixtureError("pkcs11-tool --list-objects failed: \(result.stderr)") }
        return result.stdout
    }

    /// Starts `p11kms serve` through the proxy and waits for its socket.
    func serve() throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: PluginProcess.executable)
        process.arguments = ["serve", "--listen", "unix://\(kmsSocket)", "--http-listen", "off"] + proxyArguments
        process.environment = proxyEnvironment
        let logPath = hsm.root.appendingPathComponent("serve.log").path
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = log
        process.standardError = log
        try process.run()
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: kmsSocket) {
            guard process.isRunning, Date() < deadline else {
                if process.isRunning { process.terminate() }
                process.waitUntilExit()
                throw FixtureError("p11kms serve through the proxy did not start: \((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "")")
            }
            usleep(20_000)
        }
        return process
    }

    /// SIGTERM, wait, and the exit status (idempotent).
    @discardableResult
    func stopServe(_ process: Process) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

import Foundation
import Synchronization
import GRPCTransport
import KMSProto

/// A real `p11kms` plugin for a test: its own SoftHSM directory and token, a root key made by `p11kms init`, and
/// `p11kms serve` running as a child process on a unix socket in a private folder.
public final class PluginProcess: @unchecked Sendable {
    // Mutable state (the child process) is only touched by the owning test.
    public let hsm: SoftHSMFixture
    public let tokenLabel: String
    public let pinFile: String
    public let socketPath: String
    public var listen: String { "unix://\(socketPath)" }
    public let logPath: String
    public private(set) var process: Process?
    public private(set) var initialKeyID: String = ""

    /// The built `p11kms` next to the test bundle (or `P11KMS_BINARY`).
    public static var executable: String {
        if let path = ProcessInfo.processInfo.environment["P11KMS_BINARY"] { return path }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("p11kms").path
    }

    /// Creates the SoftHSM directory and token and runs `p11kms init`.
    public init(name: String = "plugin", initialize: Bool = true) throws {
        hsm = try SoftHSMFixture(name: name)
        tokenLabel = "kms-\(name)"
        try hsm.createToken(label: tokenLabel)
        pinFile = try hsm.writePINFile()
        socketPath = hsm.root.appendingPathComponent("kms.sock").path
        logPath = hsm.root.appendingPathComponent("serve.log").path
        if initialize {
            let result = try run(["init"] + tokenArguments)
            guard result.status == 0 else { throw FixtureError("p11kms init failed: \(result.stderr)") }
            initialKeyID = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
    }

    deinit {
        if let process, process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: hsm.root)
    }

    public var tokenArguments: [String] {
        ["--module", SoftHSMFixture.modulePath, "--token-label", tokenLabel, "--pin-file", pinFile]
    }

    /// Environment for the plugin's commands: this token directory's SoftHSM config, and a state directory of its
    /// own (never the machine's /var/lib/p11kms/state).
    public var environment: [String: String] { hsm.environment.merging(["P11KMS_STATE_DIR": stateDirectory]) { _, b in b } }

    /// The plugin's `--state-dir` (created by p11kms when it first records something).
    public var stateDirectory: String { hsm.root.appendingPathComponent("state").path }

    /// Runs a `p11kms` subcommand to completion.
    public func run(_ arguments: [String], environment extra: [String: String] = [:]) throws -> Command.Result {
        try Command.run(PluginProcess.executable, arguments, environment: environment.merging(extra) { _, b in b })
    }

    /// Starts `p11kms serve` and waits until Status answers.
    public func start(_ extraArguments: [String] = [], environment extra: [String: String] = [:], waitHealthy: Bool = true) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: PluginProcess.executable)
        // Many plugins run at once in tests: an ephemeral HTTP port unless the test picks one.
        let http = extraArguments.contains("--http-listen") || extraArguments.contains("--config") ? [] : ["--http-listen", "127.0.0.1:0"]
        process.arguments = ["serve", "--listen", listen] + tokenArguments + http + extraArguments
        process.environment = environment.merging(extra) { _, b in b }
        if !FileManager.default.fileExists(atPath: logPath) { _ = FileManager.default.createFile(atPath: logPath, contents: nil) }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        self.process = process
        ChildProcesses.register(process.processIdentifier)
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if !process.isRunning { throw FixtureError("p11kms serve exited: \(self.log)") }
            if FileManager.default.fileExists(atPath: socketPath) {
                if !waitHealthy { return }
                if let status = try? client().status(), status.healthz == "ok" { return }
            }
            usleep(50_000)
        }
        throw FixtureError("p11kms serve did not become healthy: \(self.log)")
    }

    /// Sends `signal` and waits for the process to exit; returns its exit status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM) -> Int32 {
        guard let process else { return -1 }
        if process.isRunning { kill(process.processIdentifier, signal) }
        process.waitUntilExit()
        self.process = nil
        return process.terminationStatus
    }

    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    public func client() throws -> KMSClient { try KMSClient(socketPath: socketPath) }
}

/// Children started by tests, ended when the test process exits (shared plugins live in statics, whose deinit
/// never runs).
public enum ChildProcesses {
    private static let pids = LockedPIDs()

    public static func register(_ pid: Int32) {
        pids.add(pid)
    }

    static func killAll() {
        for pid in pids.all() { kill(pid, SIGTERM) }
    }
}

/// The pids of running plugins; the exit handler is installed with the first registration.
final class LockedPIDs: Sendable {
    private let state = Mutex<(pids: Set<Int32>, installed: Bool)>(([], false))
    func add(_ pid: Int32) {
        state.withLock { state in
            state.pids.insert(pid)
            if !state.installed {
                state.installed = true
                atexit { ChildProcesses.killAll() }
            }
        }
    }
    func all() -> [Int32] { state.withLock { Array($0.pids) } }
}

/// A KMS v2/v1 client over a real unix socket.
public final class KMSClient: Sendable {
    public let grpc: GRPCClient

    public init(socketPath: String) throws {
        grpc = try GRPCClient(configuration: GRPCClientConfiguration(target: "unix:\(socketPath)"))
    }

    deinit { grpc.close() }

    public func status() throws -> V2_StatusResponse {
        try V2_StatusResponse(serializedBytes: try grpc.unary(method: KMSv2Method.status, request: try V2_StatusRequest().serializedBytes(), timeout: .seconds(5)))
    }

    public func encrypt(_ plaintext: [UInt8], uid: String = "test", timeout: Duration = .seconds(5)) throws -> V2_EncryptResponse {
        var request = V2_EncryptRequest()
        request.plaintext = Data(plaintext)
        request.uid = uid
        return try V2_EncryptResponse(serializedBytes: try grpc.unary(method: KMSv2Method.encrypt, request: try request.serializedBytes(), timeout: timeout))
    }

    public func decrypt(_ ciphertext: Data, keyID: String, annotations: [String: Data] = [:], uid: String = "test",
                        timeout: Duration = .seconds(5)) throws -> [UInt8] {
        var request = V2_DecryptRequest()
        request.ciphertext = ciphertext
        request.keyID = keyID
        request.annotations = annotations
        request.uid = uid
        return Array(try V2_DecryptResponse(serializedBytes: try grpc.unary(method: KMSv2Method.decrypt, request: try request.serializedBytes(), timeout: timeout)).plaintext)
    }

    public func v1Encrypt(_ plaintext: [UInt8]) throws -> Data {
        var request = V1beta1_EncryptRequest()
        request.version = "v1beta1"
        request.plain = Data(plaintext)
        return try V1beta1_EncryptResponse(serializedBytes: try grpc.unary(method: KMSv1Method.encrypt, request: try request.serializedBytes(), timeout: .seconds(5))).cipher
    }

    public func v1Decrypt(_ cipher: Data) throws -> [UInt8] {
        var request = V1beta1_DecryptRequest()
        request.version = "v1beta1"
        request.cipher = cipher
        return Array(try V1beta1_DecryptResponse(serializedBytes: try grpc.unary(method: KMSv1Method.decrypt, request: try request.serializedBytes(), timeout: .seconds(5))).plain)
    }

    public func v1Version(_ version: String = "v1beta1") throws -> V1beta1_VersionResponse {
        var request = V1beta1_VersionRequest()
        request.version = version
        return try V1beta1_VersionResponse(serializedBytes: try grpc.unary(method: KMSv1Method.version, request: try request.serializedBytes(), timeout: .seconds(5)))
    }

    /// Sends raw bytes to a method (for malformed-request tests).
    public func raw(_ method: String, _ bytes: [UInt8]) throws(GRPCStatus) -> [UInt8] {
        try grpc.unary(method: method, request: bytes, timeout: .seconds(5))
    }
}

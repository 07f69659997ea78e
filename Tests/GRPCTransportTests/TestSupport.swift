import Foundation
import Logging
import Synchronization
@testable import GRPCTransport

/// A scratch directory removed when the value is released.
final class TemporaryDirectory: Sendable {
    let path: String

    init() throws {
        var template = Array((NSTemporaryDirectory() + "grpctransport-XXXXXX").utf8CString)
        guard let created = mkdtemp(&template) else { throw POSIXError(.EIO) }
        path = String(cString: created)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }

    func file(_ name: String) -> String { path + "/" + name }
}

struct SecretError: Error, CustomStringConvertible {
    var description: String { "secret-key-material-1234" }
}

enum TestMethods {
    static let echo = "/test.Echo/Echo"
    static let fail = "/test.Echo/Fail"
    static let crash = "/test.Echo/Crash"
    static let slow = "/test.Echo/Slow"
    static let inspect = "/test.Echo/Inspect"

    /// Slow's request: the number of milliseconds to sleep, as 4 little-endian bytes.
    static func sleepRequest(milliseconds: UInt32) -> [UInt8] {
        withUnsafeBytes(of: milliseconds.littleEndian) { Array($0) }
    }

    static let handlers: [String: UnaryHandler] = [
        echo: { request, _ in request },
        fail: { _, _ in throw GRPCStatus(.invalidArgument, "bad") },
        crash: { _, _ in throw SecretError() },
        slow: { request, _ in
            var milliseconds: UInt32 = 0
            for (index, byte) in request.prefix(4).enumerated() { milliseconds |= UInt32(byte) << (8 * index) }
            usleep(milliseconds * 1000)
            return Array("done".utf8)
        },
        inspect: { _, context in
            var lines = context.metadata.map { "\($0.key)=\($0.value)" }
            lines.append("method=\(context.method)")
            if let deadline = context.deadline {
                let remaining = deadline - ContinuousClock.now
                lines.append("deadline-ms=\(remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000)")
            } else {
                lines.append("deadline=none")
            }
            return Array(lines.joined(separator: "\n").utf8)
        },
    ]
}

/// A running server on a unix socket in its own temporary directory.
final class TestServer: Sendable {
    let directory: TemporaryDirectory
    let socketPath: String
    let server: GRPCServer

    init(
        handlers: [String: UnaryHandler] = TestMethods.handlers,
        configure: (inout GRPCServerConfiguration) -> Void = { _ in }
    ) throws {
        directory = try TemporaryDirectory()
        socketPath = directory.file("kms.sock")
        var configuration = GRPCServerConfiguration(address: "unix://" + socketPath)
        configure(&configuration)
        server = GRPCServer(configuration: configuration, handlers: handlers)
        try server.startServing()
    }

    deinit {
        server.shutdown(gracePeriod: .zero)
    }

    func makeClient() throws -> GRPCClient {
        try GRPCClient(configuration: GRPCClientConfiguration(target: "unix:" + socketPath))
    }
}

/// Runs `body(index)` on `count` dedicated threads at once and waits for all of them.
func runOnThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for index in 0..<count {
        group.enter()
        let thread = Thread {
            body(index)
            group.leave()
        }
        thread.start()
    }
    group.wait()
}

/// Runs `body` on a dedicated thread; `wait()` returns its result.
final class Background<Value: Sendable>: Sendable {
    private let result = Mutex<Value?>(nil)
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () -> Value) {
        let thread = Thread { [self] in
            let value = body()
            result.withLock { $0 = value }
            done.signal()
        }
        thread.start()
    }

    func wait() -> Value {
        done.wait()
        return result.withLock { $0! }
    }
}

/// Runs a call and returns its status code (`.ok` on success).
func statusOf(_ body: () throws(GRPCStatus) -> [UInt8]) -> GRPCStatus {
    do {
        _ = try body()
        return GRPCStatus(.ok, "")
    } catch {
        return error
    }
}

func waitUntil(timeout: Duration = .seconds(5), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        usleep(1_000)
    }
    return condition()
}

/// A swift-log handler that keeps the messages it receives.
struct CapturingLogHandler: LogHandler {
    final class Store: Sendable {
        let lines = Mutex<[String]>([])
    }

    let store: Store
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        store.lines.withLock { $0.append("\(event.level) \(event.message)") }
    }
}

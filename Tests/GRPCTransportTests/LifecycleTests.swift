import Foundation
import Logging
import Synchronization
import Testing
@testable import GRPCTransport

@Suite("Server start and shutdown", .serialized)
struct LifecycleTests {
    @Test("shutdown lets an in-flight call finish within the grace period, then refuses new calls")
    func gracefulDrain() throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        let slow = Background { () -> GRPCStatus in
            statusOf { () throws(GRPCStatus) in
                try client.unary(method: TestMethods.slow, request: TestMethods.sleepRequest(milliseconds: 400))
            }
        }
        #expect(waitUntil { fixture.server.inFlightCalls == 1 })
        let started = ContinuousClock.now
        fixture.server.shutdown(gracePeriod: .seconds(5))
        let elapsed = ContinuousClock.now - started
        #expect(slow.wait().code == .ok)
        #expect(elapsed < .seconds(4))
        #expect(fixture.server.inFlightCalls == 0)
        #expect(!FileManager.default.fileExists(atPath: fixture.socketPath))

        let after = statusOf { () throws(GRPCStatus) in try client.unary(method: TestMethods.echo, request: [1]) }
        #expect(after.code == .unavailable)
        let fresh = try fixture.makeClient()
        let freshStatus = statusOf { () throws(GRPCStatus) in try fresh.unary(method: TestMethods.echo, request: [1]) }
        #expect(freshStatus.code == .unavailable)
    }

    @Test("calls still running after the grace period are cancelled")
    func graceExpires() throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        let slow = Background { () -> GRPCStatus in
            statusOf { () throws(GRPCStatus) in
                try client.unary(method: TestMethods.slow, request: TestMethods.sleepRequest(milliseconds: 1_500))
            }
        }
        #expect(waitUntil { fixture.server.inFlightCalls == 1 })
        fixture.server.shutdown(gracePeriod: .milliseconds(100))
        let status = slow.wait()
        #expect(status.code != .ok)
        #expect(fixture.server.inFlightCalls == 0)
    }

    @Test("shutdown is idempotent and may be called concurrently; a server starts only once")
    func startAndShutdownRules() throws {
        let fixture = try TestServer()
        #expect(throws: GRPCStatus.self) { try fixture.server.startServing() }
        runOnThreads(4) { _ in fixture.server.shutdown(gracePeriod: .milliseconds(50)) }
        fixture.server.shutdown(gracePeriod: .zero)
        #expect(fixture.server.boundPort == nil)
        let restart = Result { () throws(GRPCStatus) in try fixture.server.startServing() }
        #expect(throws: GRPCStatus.self) { try restart.get() }

        let neverStarted = GRPCServer(configuration: GRPCServerConfiguration(address: "unix:/tmp/unused.sock"), handlers: [:])
        neverStarted.shutdown(gracePeriod: .zero)
    }

    @Test("shutdown under load ends every call cleanly", arguments: [0, 4])
    func shutdownUnderLoad(workers: Int) throws {
        let fixture = try TestServer { $0.workerThreads = workers }
        let client = try fixture.makeClient()
        let stop = Atomic<Bool>(false)
        let succeeded = Atomic<Int>(0)
        let unexpected = Mutex<[GRPCStatus]>([])
        let load = Background { () -> Void in
            runOnThreads(8) { index in
                while !stop.load(ordering: .relaxed) {
                    do throws(GRPCStatus) {
                        let payload = [UInt8](repeating: UInt8(index), count: 100)
                        if try client.unary(method: TestMethods.echo, request: payload, timeout: .seconds(5)) == payload {
                            succeeded.add(1, ordering: .relaxed)
                        }
                    } catch where [GRPCStatusCode.unavailable, .cancelled].contains(error.code) {
                        continue
                    } catch {
                        unexpected.withLock { $0.append(error) }
                    }
                }
            }
        }
        #expect(waitUntil { succeeded.load(ordering: .relaxed) > 200 })
        fixture.server.shutdown(gracePeriod: .milliseconds(100))
        #expect(fixture.server.inFlightCalls == 0)
        stop.store(true, ordering: .relaxed)
        load.wait()
        #expect(unexpected.withLock { $0 }.isEmpty, "\(unexpected.withLock { $0 })")
    }

    @Test("releasing a running server shuts it down")
    func releaseWithoutShutdown() throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("dropped.sock")
        do {
            let server = GRPCServer(configuration: GRPCServerConfiguration(address: "unix:" + path), handlers: TestMethods.handlers)
            try server.startServing()
            let client = try GRPCClient(configuration: GRPCClientConfiguration(target: "unix:" + path))
            #expect(try client.unary(method: TestMethods.echo, request: [1]) == [1])
        }
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("a new server can take over the path of a stopped one")
    func samePathAgain() throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("again.sock")
        for round in 0..<2 {
            let server = GRPCServer(configuration: GRPCServerConfiguration(address: "unix:" + path), handlers: TestMethods.handlers)
            try server.startServing()
            let client = try GRPCClient(configuration: GRPCClientConfiguration(target: "unix://" + path))
            #expect(try client.unary(method: TestMethods.echo, request: [UInt8(round)]) == [UInt8(round)])
            server.shutdown(gracePeriod: .seconds(1))
        }
    }

    @Test("binding in a missing directory fails with a clear error")
    func bindFailure() throws {
        let server = GRPCServer(
            configuration: GRPCServerConfiguration(address: "unix:/nonexistent-dir-for-test/kms.sock"),
            handlers: TestMethods.handlers)
        let result = Result { () throws(GRPCStatus) in try server.startServing() }
        guard case .failure(let status) = result else {
            Issue.record("start unexpectedly succeeded")
            return
        }
        #expect(status.code == .unavailable)
        #expect(status.message.contains("does not exist"), "\(status)")
        // Still a clean object: shutdown is a no-op.
        server.shutdown(gracePeriod: .zero)

        let tooLong = GRPCServer(
            configuration: GRPCServerConfiguration(address: "unix:/tmp/" + String(repeating: "x", count: 120)),
            handlers: [:])
        #expect(throws: GRPCStatus.self) { try tooLong.startServing() }
    }

    @Test("core log lines can be routed to swift-log")
    func coreLogRouting() throws {
        let store = CapturingLogHandler.Store()
        GRPCRuntime.routeCoreLogs(to: Logger(label: "grpc.core") { _ in CapturingLogHandler(store: store) })
        defer { GRPCRuntime.routeCoreLogs(to: nil) }
        let server = GRPCServer(
            configuration: GRPCServerConfiguration(address: "unix:/nonexistent-dir-for-test/log.sock"), handlers: [:])
        #expect(throws: GRPCStatus.self) { try server.startServing() }
        let lines = store.lines.withLock { $0 }
        #expect(lines.contains { $0.hasPrefix("warning") && $0.contains("No such file or directory") }, "\(lines)")
    }

    @Test("20 start / call / shutdown cycles")
    func repeatedCycles() throws {
        let directory = try TemporaryDirectory()
        for cycle in 0..<20 {
            var configuration = GRPCServerConfiguration(address: "unix:" + directory.file("cycle.sock"))
            configuration.workerThreads = cycle % 3
            configuration.completionQueueThreads = 1 + cycle % 2
            let server = GRPCServer(configuration: configuration, handlers: TestMethods.handlers)
            try server.startServing()
            let client = try GRPCClient(configuration: GRPCClientConfiguration(target: "unix:" + directory.file("cycle.sock")))
            #expect(try client.unary(method: TestMethods.echo, request: [UInt8(cycle)]) == [UInt8(cycle)])
            if cycle % 2 == 0 { client.close() }
            server.shutdown(gracePeriod: .milliseconds(cycle % 4 == 0 ? 0 : 200))
        }
    }

    @Test("a TCP listener reports its port and refuses a second server on it")
    func tcpPort() throws {
        let server = GRPCServer(configuration: GRPCServerConfiguration(address: "127.0.0.1:0"), handlers: TestMethods.handlers)
        try server.startServing()
        defer { server.shutdown(gracePeriod: .zero) }
        let port = try #require(server.boundPort)
        #expect(port > 0)
        let client = try GRPCClient(configuration: GRPCClientConfiguration(target: "127.0.0.1:\(port)"))
        #expect(try client.unary(method: TestMethods.echo, request: [4, 2]) == [4, 2])

        let second = GRPCServer(configuration: GRPCServerConfiguration(address: "127.0.0.1:\(port)"), handlers: [:])
        #expect(throws: GRPCStatus.self) { try second.startServing() }
    }
}

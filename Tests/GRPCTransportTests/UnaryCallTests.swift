import Foundation
import Synchronization
import Testing
@testable import GRPCTransport

@Suite("Unary calls over a unix socket", .serialized)
struct UnaryCallTests {
    @Test("payloads of 0 to 64 KiB round-trip", arguments: [0, 1, 2, 15, 16, 23, 24, 100, 1000, 4096, 16_384, 65_535, 65_536])
    func roundTrip(size: Int) throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        var generator = SystemRandomNumberGenerator()
        let payload = (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) }
        #expect(try client.unary(method: TestMethods.echo, request: payload) == payload)
        #expect(try client.unary(method: TestMethods.echo, request: payload) == payload)
    }

    @Test("inline handlers (no worker threads) and several completion queues")
    func inlineHandlers() throws {
        for queues in [1, 2] {
            let fixture = try TestServer {
                $0.workerThreads = 0
                $0.completionQueueThreads = queues
            }
            let client = try fixture.makeClient()
            for size in [0, 10, 70_000] {
                let payload = [UInt8](repeating: 7, count: size)
                #expect(try client.unary(method: TestMethods.echo, request: payload) == payload)
            }
            #expect(statusOf { () throws(GRPCStatus) in try client.unary(method: TestMethods.fail, request: []) }
                == GRPCStatus(.invalidArgument, "bad"))
        }
    }

    @Test("an unknown method fails with unimplemented")
    func unknownMethod() throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        let status = statusOf { () throws(GRPCStatus) in try client.unary(method: "/test.Echo/Nope", request: [1, 2]) }
        #expect(status.code == .unimplemented)
        #expect(status.message.contains("/test.Echo/Nope"))
        // The server keeps serving afterwards.
        #expect(try client.unary(method: TestMethods.echo, request: [9]) == [9])
    }

    @Test("a thrown GRPCStatus reaches the client with its code and message")
    func statusPropagates() throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        let status = statusOf { () throws(GRPCStatus) in try client.unary(method: TestMethods.fail, request: []) }
        #expect(status == GRPCStatus(.invalidArgument, "bad"))
    }

    @Test("any other error becomes internal without its text")
    func otherErrorsAreInternal() throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        let status = statusOf { () throws(GRPCStatus) in try client.unary(method: TestMethods.crash, request: []) }
        #expect(status.code == .internal)
        #expect(!status.message.contains("secret"))
    }

    @Test("client metadata and the deadline are visible to the handler")
    func metadataAndDeadline() throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        let response = try client.unary(
            method: TestMethods.inspect, request: [],
            metadata: [(key: "token", value: "abc.def"), (key: "x-custom", value: "value 2")],
            timeout: .seconds(30))
        let lines = Set(String(decoding: response, as: UTF8.self).split(separator: "\n").map(String.init))
        #expect(lines.contains("token=abc.def"))
        #expect(lines.contains("x-custom=value 2"))
        #expect(lines.contains("method=\(TestMethods.inspect)"))
        let deadline = lines.first { $0.hasPrefix("deadline-ms=") }.flatMap { Int($0.dropFirst("deadline-ms=".count)) }
        // The core rounds the grpc-timeout header up (to 3 significant digits), so the server's
        // deadline may be a little later than the client's.
        #expect(deadline.map { $0 > 25_000 && $0 <= 30_500 } == true, "deadline: \(lines)")
    }

    @Test("illegal metadata is rejected by the client")
    func illegalMetadata() throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        let status = statusOf { () throws(GRPCStatus) in
            try client.unary(method: TestMethods.echo, request: [], metadata: [(key: "Bad Key", value: "x")])
        }
        #expect(status.code == .invalidArgument)
    }

    @Test("16 threads x 500 concurrent calls all return their own payload")
    func concurrentCalls() throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        let failures = Atomic<Int>(0)
        runOnThreads(16) { thread in
            for call in 0..<500 {
                let payload = Array("\(thread)-\(call)".utf8) + [UInt8](repeating: UInt8(thread), count: call % 64)
                do {
                    let response = try client.unary(method: TestMethods.echo, request: payload)
                    if response != payload { failures.add(1, ordering: .relaxed) }
                } catch {
                    failures.add(1, ordering: .relaxed)
                }
            }
        }
        #expect(failures.load(ordering: .relaxed) == 0)
        #expect(waitUntil { fixture.server.inFlightCalls == 0 })
    }

    @Test("blocking handlers run in parallel on the worker threads")
    func workersRunInParallel() throws {
        let fixture = try TestServer { $0.workerThreads = 4 }
        let client = try fixture.makeClient()
        let started = ContinuousClock.now
        runOnThreads(4) { _ in
            _ = try? client.unary(method: TestMethods.slow, request: TestMethods.sleepRequest(milliseconds: 300))
        }
        let elapsed = ContinuousClock.now - started
        #expect(elapsed < .milliseconds(900), "4 calls of 300 ms took \(elapsed)")
    }

    @Test("a slow handler exceeds the client's deadline")
    func deadlineExceeded() throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        let started = ContinuousClock.now
        let status = statusOf { () throws(GRPCStatus) in
            try client.unary(
                method: TestMethods.slow, request: TestMethods.sleepRequest(milliseconds: 1_000), timeout: .milliseconds(150))
        }
        #expect(status.code == .deadlineExceeded)
        #expect(ContinuousClock.now - started < .milliseconds(900))
        // The server is still usable while the slow handler finishes.
        #expect(try client.unary(method: TestMethods.echo, request: [1]) == [1])
    }

    @Test("the client's receive limit and the server's receive limit are enforced")
    func messageLimits() throws {
        let fixture = try TestServer { $0.maxReceiveMessageSize = 1024 }
        let client = try fixture.makeClient()
        let tooBig = statusOf { () throws(GRPCStatus) in
            try client.unary(method: TestMethods.echo, request: [UInt8](repeating: 1, count: 2048))
        }
        #expect(tooBig.code == .resourceExhausted)

        var configuration = GRPCClientConfiguration(target: "unix:" + fixture.socketPath)
        configuration.maxReceiveMessageSize = 100
        let smallClient = try GRPCClient(configuration: configuration)
        let response = statusOf { () throws(GRPCStatus) in
            try smallClient.unary(method: TestMethods.echo, request: [UInt8](repeating: 1, count: 500))
        }
        #expect(response.code == .resourceExhausted)
        #expect(try smallClient.unary(method: TestMethods.echo, request: [1, 2, 3]) == [1, 2, 3])
    }

    @Test("a closed client fails with unavailable; close is idempotent")
    func closedClient() throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        #expect(try client.unary(method: TestMethods.echo, request: [1]) == [1])
        client.close()
        client.close()
        let status = statusOf { () throws(GRPCStatus) in try client.unary(method: TestMethods.echo, request: [1]) }
        #expect(status.code == .unavailable)
    }

    @Test("a missing server fails with unavailable")
    func missingServer() throws {
        let directory = try TemporaryDirectory()
        let client = try GRPCClient(configuration: GRPCClientConfiguration(target: "unix:" + directory.file("none.sock")))
        let status = statusOf { () throws(GRPCStatus) in
            try client.unary(method: TestMethods.echo, request: [], timeout: .seconds(5))
        }
        #expect(status.code == .unavailable)
    }
}

import Foundation
import Testing
@testable import GRPCTransport

@Suite("Signal masks")
struct SignalMaskTests {
    /// Reads the blocked-signal mask of every thread of this process, by thread name.
    static func blockedMasks() throws -> [(name: String, mask: UInt64)] {
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")
        return tasks.compactMap { task in
            guard let name = try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8),
                  let status = try? String(contentsOfFile: "/proc/self/task/\(task)/status", encoding: .utf8),
                  let line = status.split(separator: "\n").first(where: { $0.hasPrefix("SigBlk:") }),
                  let mask = UInt64(line.dropFirst("SigBlk:".count).trimmingCharacters(in: .whitespaces), radix: 16)
            else { return nil }
            return (name.trimmingCharacters(in: .whitespacesAndNewlines), mask)
        }
    }

    /// The test runner's own threads may already block these signals, so this is a regression guard;
    /// the discriminating check is running GRPCTransportBench without blockSignalsBeforeInit().
    @Test("threads started by the gRPC core and by this module block SIGTERM and SIGINT")
    func threadsBlockTerminationSignals() throws {
        let fixture = try TestServer()
        let client = try fixture.makeClient()
        #expect(try client.unary(method: TestMethods.echo, request: [1]) == [1])
        let wanted = UInt64(1) << (SIGTERM - 1) | UInt64(1) << (SIGINT - 1)
        let ours = ["grpc-cq-", "grpc-worker-", "default-executo", "resolver-execut", "timer_manager", "grpc_global_tim", "event_engine"]
        let masks = try Self.blockedMasks().filter { thread in ours.contains { thread.name.hasPrefix($0) } }
        #expect(!masks.isEmpty)
        for thread in masks {
            #expect(thread.mask & wanted == wanted, "\(thread.name) does not block SIGTERM/SIGINT")
        }
    }
}

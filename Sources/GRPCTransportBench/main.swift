// Drives a GRPCServer with a no-op unary handler over a unix socket from N client threads.
//
// usage: GRPCTransportBench [threads=16] [seconds=5] [workerThreads=4] [completionQueueThreads=1]
//                           [payloadBytes=32] [clients=1]
//
// Prints calls/s, p50/p99 latency and the process CPU time per call (client and server together:
// both run in this process).

import Dispatch
import Foundation
import GRPCTransport
import Synchronization

GRPCRuntime.blockSignalsBeforeInit()

let arguments = CommandLine.arguments.dropFirst().map { Int($0) }
func argument(_ index: Int, _ fallback: Int) -> Int {
    index < arguments.count ? (arguments[index] ?? fallback) : fallback
}
let threadCount = argument(0, 16)
let seconds = argument(1, 5)
let workerThreads = argument(2, 4)
let queueThreads = argument(3, 1)
let payloadSize = argument(4, 32)
let clientCount = max(1, argument(5, 1))

let directory = NSTemporaryDirectory() + "grpc-bench-\(getpid())"
try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: directory) }
let socket = directory + "/bench.sock"

var configuration = GRPCServerConfiguration(address: "unix:" + socket)
configuration.workerThreads = workerThreads
configuration.completionQueueThreads = queueThreads
let response = [UInt8](repeating: 0x5a, count: payloadSize)
let server = GRPCServer(configuration: configuration, handlers: ["/bench.Bench/Noop": { _, _ in response }])
try server.start()

let clients = try (0..<clientCount).map { _ in
    try GRPCClient(configuration: GRPCClientConfiguration(target: "unix:" + socket))
}
let request = [UInt8](repeating: 0xa5, count: payloadSize)
// Warm up the connections.
for client in clients { _ = try client.unary(method: "/bench.Bench/Noop", request: request) }

func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
        + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

let stop = Atomic<Bool>(false)
let failures = Atomic<Int>(0)
let latencies = Mutex<[[Double]]>([])
let group = DispatchGroup()
let cpuStart = cpuSeconds()
let wallStart = ContinuousClock.now
for index in 0..<threadCount {
    group.enter()
    Thread {
        let client = clients[index % clients.count]
        var samples: [Double] = []
        samples.reserveCapacity(1 << 16)
        let clock = ContinuousClock()
        while !stop.load(ordering: .relaxed) {
            let start = clock.now
            do {
                _ = try client.unary(method: "/bench.Bench/Noop", request: request)
            } catch {
                failures.add(1, ordering: .relaxed)
            }
            let elapsed = start.duration(to: clock.now)
            samples.append(Double(elapsed.components.seconds) * 1e6 + Double(elapsed.components.attoseconds) / 1e12)
        }
        latencies.withLock { $0.append(samples) }
        group.leave()
    }.start()
}
Thread.sleep(forTimeInterval: Double(seconds))
stop.store(true, ordering: .relaxed)
group.wait()
let wall = wallStart.duration(to: .now)
let cpu = cpuSeconds() - cpuStart

let all = latencies.withLock { $0.flatMap { $0 } }.sorted()
let wallSeconds = Double(wall.components.seconds) + Double(wall.components.attoseconds) / 1e18
func percentile(_ p: Double) -> Double { all.isEmpty ? 0 : all[min(all.count - 1, Int(Double(all.count) * p))] }
print("threads=\(threadCount) clients=\(clientCount) workers=\(workerThreads) cqThreads=\(queueThreads) payload=\(payloadSize)B")
print(String(format: "calls: %d in %.2f s = %.0f calls/s, failures: %d", all.count, wallSeconds, Double(all.count) / wallSeconds,
             failures.load(ordering: .relaxed)))
print(String(format: "latency: p50 %.1f us, p99 %.1f us", percentile(0.50), percentile(0.99)))
print(String(format: "process CPU: %.2f s = %.1f us per call (client + server)", cpu, cpu * 1e6 / Double(max(all.count, 1))))

for client in clients { client.close() }
server.shutdown(gracePeriod: .seconds(1))

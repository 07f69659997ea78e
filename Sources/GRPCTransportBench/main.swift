// Drives a GRPCServer with a no-op unary handler over a unix socket from N client threads.
//
// usage: GRPCTransportBench [threads=16] [seconds=5] [workerThreads=4] [completionQueueThreads=1]
//                           [payloadBytes=32] [clients=1]
//
// The server runs in a child process (this executable with "serve"), so the CPU time per call is
// reported separately for the server and for the client side. Prints calls/s and p50/p99 latency.

import Dispatch
import Foundation
import GRPCTransport
import Synchronization

GRPCRuntime.blockSignalsBeforeInit()

let method = "/bench.Bench/Noop"

func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
        + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

/// Child mode: serve until stdin closes; answer each "cpu" line with this process's CPU seconds.
func serve(socket: String, workers: Int, queues: Int, payloadSize: Int) throws {
    var configuration = GRPCServerConfiguration(address: "unix:" + socket)
    configuration.workerThreads = workers
    configuration.completionQueueThreads = queues
    let response = [UInt8](repeating: 0x5a, count: payloadSize)
    let server = GRPCServer(configuration: configuration, handlers: [method: { _, _ in response }])
    try server.start()
    print("ready")
    fflush(nil)
    while let line = readLine() {
        if line == "cpu" {
            print(cpuSeconds())
            fflush(nil)
        }
    }
    server.shutdown(gracePeriod: .seconds(1))
}

let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "serve" {
    try serve(
        socket: arguments[1], workers: Int(arguments[2])!, queues: Int(arguments[3])!, payloadSize: Int(arguments[4])!)
    exit(0)
}

func argument(_ index: Int, _ fallback: Int) -> Int {
    index < arguments.count ? (Int(arguments[index]) ?? fallback) : fallback
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

// Start the server process and talk to it over its stdin / stdout.
let child = Process()
child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
child.arguments = ["serve", socket, "\(workerThreads)", "\(queueThreads)", "\(payloadSize)"]
let toChild = Pipe(), fromChild = Pipe()
child.standardInput = toChild
child.standardOutput = fromChild
try child.run()
func childLine() -> String {
    var bytes: [UInt8] = []
    var byte: UInt8 = 0
    while read(fromChild.fileHandleForReading.fileDescriptor, &byte, 1) == 1, byte != 10 { bytes.append(byte) }
    return String(decoding: bytes, as: UTF8.self)
}
func serverCPU() -> Double {
    toChild.fileHandleForWriting.write(Data("cpu\n".utf8))
    return Double(childLine()) ?? .nan
}
guard childLine() == "ready" else { fatalError("the server process did not start") }

let clients = try (0..<clientCount).map { _ in
    try GRPCClient(configuration: GRPCClientConfiguration(target: "unix:" + socket))
}
let request = [UInt8](repeating: 0xa5, count: payloadSize)
for client in clients { _ = try client.unary(method: method, request: request) }

let stop = Atomic<Bool>(false)
let failures = Atomic<Int>(0)
let latencies = Mutex<[[Double]]>([])
let group = DispatchGroup()
let serverStart = serverCPU()
let clientStart = cpuSeconds()
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
                _ = try client.unary(method: method, request: request)
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
let clientCPU = cpuSeconds() - clientStart
let serverCPUUsed = serverCPU() - serverStart

let all = latencies.withLock { $0.flatMap { $0 } }.sorted()
let calls = Double(max(all.count, 1))
let wallSeconds = Double(wall.components.seconds) + Double(wall.components.attoseconds) / 1e18
func percentile(_ p: Double) -> Double { all.isEmpty ? 0 : all[min(all.count - 1, Int(Double(all.count) * p))] }
print("threads=\(threadCount) clients=\(clientCount) workers=\(workerThreads) cqThreads=\(queueThreads) payload=\(payloadSize)B")
print(String(format: "calls: %d in %.2f s = %.0f calls/s, failures: %d", all.count, wallSeconds, Double(all.count) / wallSeconds,
             failures.load(ordering: .relaxed)))
print(String(format: "latency: p50 %.1f us, p99 %.1f us", percentile(0.50), percentile(0.99)))
print(String(format: "CPU per call: server %.1f us, client %.1f us", serverCPUUsed * 1e6 / calls, clientCPU * 1e6 / calls))

for client in clients { client.close() }
try? toChild.fileHandleForWriting.close()
child.waitUntilExit()

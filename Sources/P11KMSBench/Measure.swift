import Foundation
import Synchronization

/// Runs `body` on `threads` threads of our own for `seconds`, recording each call's latency.
struct Run: Sendable {
    let name: String
    let operations: Int
    let errors: Int
    let seconds: Double
    let latencies: [UInt64]  // nanoseconds, sorted

    var rate: Double { Double(operations) / seconds }

    func percentile(_ p: Double) -> Double {
        guard !latencies.isEmpty else { return .nan }
        let index = min(latencies.count - 1, Int(Double(latencies.count) * p))
        return Double(latencies[index]) / 1000
    }
}

func measure(_ name: String, threads: Int, seconds: Double, _ body: @escaping @Sendable (_ thread: Int) -> Bool) -> Run {
    let results = Mutex<[(Int, Int, [UInt64])]>([])
    let start = DispatchTime.now().uptimeNanoseconds
    let deadline = start + UInt64(seconds * 1e9)
    let group = DispatchGroup()
    for t in 0..<threads {
        group.enter()
        let thread = Thread {
            var ok = 0
            var bad = 0
            var latencies: [UInt64] = []
            latencies.reserveCapacity(200_000)
            while true {
                let t0 = DispatchTime.now().uptimeNanoseconds
                if t0 >= deadline { break }
                if body(t) { ok += 1 } else { bad += 1 }
                latencies.append(DispatchTime.now().uptimeNanoseconds - t0)
            }
            results.withLock { $0.append((ok, bad, latencies)) }
            group.leave()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
    group.wait()
    let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    let all = results.withLock { $0 }
    return Run(name: name, operations: all.map(\.0).reduce(0, +), errors: all.map(\.1).reduce(0, +), seconds: elapsed,
               latencies: all.flatMap(\.2).sorted())
}

/// CPU time and memory of a process, from /proc.
struct ProcessSample {
    let cpuSeconds: Double
    let rssKiB: Int
    let hwmKiB: Int

    static func read(pid: Int32) -> ProcessSample? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        // Fields after the command name (which is in parentheses and may contain spaces).
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let utime = Double(fields[11]) ?? 0
        let stime = Double(fields[12]) ?? 0
        func kib(_ key: String) -> Int {
            for line in status.split(separator: "\n") where line.hasPrefix(key) {
                return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
            }
            return 0
        }
        return ProcessSample(cpuSeconds: (utime + stime) / ticks, rssKiB: kib("VmRSS:"), hwmKiB: kib("VmHWM:"))
    }
}

func selfCPU() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

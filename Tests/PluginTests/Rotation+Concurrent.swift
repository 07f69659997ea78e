import Foundation
import Testing
import TestSupport

/// Two `rotate` runs started at once on one token are serialised: both succeed, each prints the key it made
/// current, the keys have different generations, and exactly one key is current afterwards.
@Suite("Concurrent rotations")
struct ConcurrentRotationTests {
    @Test("two rotates at once (key generation slowed to 600 ms): different key_ids and generations, one current")
    func twoAtOnce() throws {
        let plugin = try PluginProcess(name: "rotrace")
        let root = try TemporaryDirectory.make(prefix: "rotrace-plan")
        let plan = root.appendingPathComponent("plan").path
        let calls = root.appendingPathComponent("calls.log").path
        // Without serialisation both runs read the key list before either generates: the slow C_GenerateKey keeps
        // them overlapping.
        try "delay C_GenerateKey 600\n".write(toFile: plan, atomically: true, encoding: .utf8)
        var environment = plugin.environment
        environment["FAULTPKCS11_MODULE"] = SoftHSMFixture.modulePath
        environment["FAULTPKCS11_CONTROL"] = plan
        environment["FAULTPKCS11_LOG"] = calls
        let env = environment
        let arguments = ["rotate", "--module", FaultModule.path, "--token-label", plugin.tokenLabel, "--pin-file", plugin.pinFile]

        for round in 0..<2 {
            let before = try plugin.keys()
            let results = ResultBox()
            let group = DispatchGroup()
            for slot in 0..<2 {
                group.enter()
                Thread {
                    results.set(slot, Result { try Command.run(PluginProcess.executable, arguments, environment: env) })
                    group.leave()
                }.start()
            }
            #expect(group.wait(timeout: .now() + 30) == .success)
            let outcomes = try (0..<2).map { try #require(results.get($0)).get() }
            for outcome in outcomes { #expect(outcome.status == 0, "round \(round): \(outcome.stderr)") }
            let printed = outcomes.map { $0.stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
            #expect(Set(printed).count == 2, "round \(round): \(printed)")
            // One run waited for the other's lock and said so.
            #expect(outcomes.contains { $0.stderr.contains("waiting for another rotate") })

            let after = try plugin.keys()
            #expect(after.keys.count == before.keys.count + 2)
            let made = after.keys.filter { printed.contains($0.key_id) }
            #expect(made.count == 2)
            #expect(Set(made.map(\.generation)).count == 2, "round \(round): \(made.map(\.generation))")
            #expect(Set(after.keys.map(\.generation)).count == after.keys.count)
            #expect(after.current.count == 1)
            // The current key is the one made last, by the run that reported the higher generation.
            let last = try #require(made.max { $0.generation < $1.generation })
            #expect(after.current.first?.key_id == last.key_id)
            // Each run's stderr names the key it replaced: the second one replaced the first one's key.
            let first = try #require(made.min { $0.generation < $1.generation })
            #expect(outcomes.contains { $0.stderr.contains("rotated: \(first.key_id) -> \(last.key_id)") })
        }
    }
}

final class ResultBox: @unchecked Sendable {
    // Each slot is written once by its thread before `group.leave()`, read after `group.wait()`.
    private var values: [Int: Result<Command.Result, any Error>] = [:]
    private let lock = NSLock()
    func set(_ slot: Int, _ value: Result<Command.Result, any Error>) { lock.lock(); values[slot] = value; lock.unlock() }
    func get(_ slot: Int) -> Result<Command.Result, any Error>? { lock.lock(); defer { lock.unlock() }; return values[slot] }
}

import Foundation
import GRPCTransport
import Testing
import TestSupport

struct BudgetListing: Decodable {
    struct Key: Decodable { let key_id: String; let state: String; let encryptions_reserved: Int; let encryption_budget: Int }
    let keys: [Key]
}

extension PluginProcess {
    /// `encryptions_reserved` of `keyID` as `p11kms keys --format json` reads it from the token.
    func reserved(_ keyID: String, budget: Int) throws -> Int {
        let result = try run(["keys", "--format", "json", "--http", "off", "--encryption-budget", "\(budget)"] + tokenArguments)
        guard result.status == 0 else { throw FixtureError("keys failed: \(result.stderr)") }
        let listing = try JSONDecoder().decode(BudgetListing.self, from: Data(result.stdout.utf8))
        let key = try #require(listing.keys.first { $0.key_id == keyID })
        #expect(key.encryption_budget == budget)
        return key.encryptions_reserved
    }
}

@Suite("Encryption budget per root key")
struct EncryptionBudgetTests {
    @Test("the count is kept in the token: it never goes down across kill -9 and restarts, and covers every Encrypt")
    func countSurvivesRestartsAndKill() throws {
        let plugin = try PluginProcess(name: "budget-restart")
        let key = plugin.initialKeyID
        let budget = 1000 // blocks of 3 (1/256 of the budget)
        let flags = ["--encryption-budget", "\(budget)"]
        #expect(try plugin.reserved(key, budget: budget) == 1, "init counted its self-test")
        try plugin.start(flags)
        let client = try plugin.client()
        for _ in 0..<10 { _ = try client.encrypt(randomBytes(32)) }
        let beforeKill = try plugin.reserved(key, budget: budget)
        // The self-test, 10 Encrypts and the start-up canary, rounded up to a block.
        #expect(beforeKill >= 12 && beforeKill <= 12 + 3, "\(beforeKill)")
        plugin.stop(signal: SIGKILL)
        let afterKill = try plugin.reserved(key, budget: budget)
        #expect(afterKill >= beforeKill)

        // A restarted plugin counts what was reserved as used: its first Encrypts reserve the next block.
        try plugin.start(flags)
        for _ in 0..<2 { _ = try plugin.client().encrypt(randomBytes(32)) }
        let afterRestart = try plugin.reserved(key, budget: budget)
        #expect(afterRestart > afterKill && afterRestart <= afterKill + 2 * 3, "\(afterKill) -> \(afterRestart)")
        plugin.stop(signal: SIGKILL)
        try plugin.start(flags)
        plugin.stop()
        #expect(try plugin.reserved(key, budget: budget) >= afterRestart)
    }

    @Test("Status turns unhealthy at 99 %; at 100 % Encrypt fails naming 'p11kms rotate', Decrypt still works; rotate clears it")
    func refusesAtTheLimit() throws {
        let plugin = try PluginProcess(name: "budget-limit")
        let key = plugin.initialKeyID
        let budget = 200 // blocks of 1: the token holds the exact count
        let port = freePort()
        try plugin.start(["--encryption-budget", "\(budget)", "--http-listen", "127.0.0.1:\(port)", "--canary-interval", "3600"])
        let client = try plugin.client()
        let seed = randomBytes(32)
        let early = try client.encrypt(seed)
        for _ in 0..<180 { _ = try client.encrypt(randomBytes(32)) }
        #expect(try client.status().healthz == "ok")
        let metrics = try httpGet(port: port, path: "/metrics").body
        #expect(metricValue(metrics, "p11kms_encryption_budget") == Double(budget), "\(metrics)")
        let reservedNow = try plugin.reserved(key, budget: budget)
        #expect(metricValue(metrics, "p11kms_key_encryptions_reserved{key_id=\"\(key)\"}") == Double(reservedNow))

        // Up to 99 % (198 of 200, the start-up canary included).
        while try plugin.reserved(key, budget: budget) < 198 { _ = try client.encrypt(randomBytes(32)) }
        var reason = ""
        #expect(try waitUntil(10) { reason = try client.status().healthz; return reason != "ok" })
        #expect(reason.contains(key) && reason.contains("p11kms rotate"), "\(reason)")

        // At 100 %: refused, with the fix named; nothing more is counted; Decrypt is unaffected.
        var refusal: GRPCStatus?
        for _ in 0..<10 {
            do {
                _ = try client.encrypt(randomBytes(32))
            } catch let error as GRPCStatus {
                refusal = error
                break
            }
        }
        let error = try #require(refusal)
        #expect(error.code == .failedPrecondition)
        #expect(error.message.contains("p11kms rotate"), "\(error.message)")
        #expect(try plugin.reserved(key, budget: budget) == budget)
        #expect(try client.decrypt(early.ciphertext, keyID: key) == seed)
        // A restart does not reset the count.
        plugin.stop()
        try plugin.start(["--encryption-budget", "\(budget)", "--http-listen", "127.0.0.1:\(port)"], waitHealthy: false)
        #expect(waitUntil(10) { (try? plugin.client().status())?.healthz.contains("p11kms rotate") == true })
        expectStatus(.failedPrecondition) { _ = try plugin.client().encrypt(randomBytes(32)) }

        let next = try plugin.rotate()
        _ = try plugin.waitForKey(next, client: try plugin.client(), timeout: 10)
        #expect(try waitUntil(10) { try plugin.client().status().healthz == "ok" })
        #expect(try plugin.client().encrypt(randomBytes(32)).keyID == next)
        #expect(try plugin.client().decrypt(early.ciphertext, keyID: key) == seed)
    }
}

import Foundation
import GRPCTransport
import KMSProto
import Testing
import TestSupport

/// `serve --session-key-copies`: the fast path in a running plugin, its gauge, and a retire taking effect in the
/// plugin although it holds a session copy of the key.
@Suite("Session-object key copies in a running plugin")
struct SessionKeyCopyServeTests {
    private func copiesGauge(_ port: Int, _ state: String) throws -> Double? {
        metricValue(try httpGet(port: port, path: "/metrics").body, "p11kms_session_key_copies{state=\"\(state)\"}")
    }

    @Test("on by default: the current key runs with a copy; a key rotated away and retired stops decrypting within the probe interval")
    func onByDefault() throws {
        let plugin = try PluginProcess(name: "copies-on")
        let port = freePort()
        try plugin.start(["--http-listen", "127.0.0.1:\(port)", "--probe-interval", "0.5"])
        let client = try plugin.client()
        let seed = randomBytes(32)
        let old = try client.encrypt(seed)
        #expect(try client.decrypt(old.ciphertext, keyID: old.keyID) == seed)
        #expect(try copiesGauge(port, "active") == 1 && copiesGauge(port, "refused") == 0)

        // Rotated and retired at once, before the plugin's next refresh: the copy goes within the probe interval.
        let rotated = try plugin.run(["rotate"] + plugin.tokenArguments)
        #expect(rotated.status == 0, "\(rotated.stderr)")
        let retired = try plugin.run(["retire", old.keyID] + plugin.tokenArguments)
        #expect(retired.status == 0, "\(retired.stderr)")
        let refused = try waitUntil(5) {
            do {
                _ = try client.decrypt(old.ciphertext, keyID: old.keyID)
                return false
            } catch let status as GRPCStatus {
                return status.code == .failedPrecondition
            }
        }
        #expect(refused, "the session copy must not outlive the retire by more than the probe interval")
        let fresh = try client.encrypt(seed)
        #expect(fresh.keyID != old.keyID)
        #expect(try client.decrypt(fresh.ciphertext, keyID: fresh.keyID) == seed)
        #expect(try copiesGauge(port, "active") == 1, "the new current key runs with a copy of its own")
    }

    @Test("--session-key-copies=false: round trips with the token objects, no copy; a bad value is refused")
    func off() throws {
        let plugin = try PluginProcess(name: "copies-off")
        let bad = try plugin.run(["serve", "--listen", plugin.listen, "--session-key-copies=maybe", "--http-listen", "off"]
                                 + plugin.tokenArguments)
        #expect(bad.status != 0 && bad.stderr.contains("session-key-copies must be true or false"), "\(bad.stderr)")
        let port = freePort()
        try plugin.start(["--http-listen", "127.0.0.1:\(port)", "--session-key-copies=false"])
        let client = try plugin.client()
        for _ in 0..<5 {
            let seed = randomBytes(32)
            let wrapped = try client.encrypt(seed)
            #expect(try client.decrypt(wrapped.ciphertext, keyID: wrapped.keyID) == seed)
        }
        #expect(try copiesGauge(port, "active") == 0)
        let printed = try plugin.run(["serve", "--print-config"] + plugin.tokenArguments,
                                     environment: ["P11KMS_SESSION_KEY_COPIES": "false"])
        #expect(printed.stdout.contains("session-key-copies: false  # environment P11KMS_SESSION_KEY_COPIES"), "\(printed.stdout)")
    }
}

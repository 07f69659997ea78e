import Foundation
import GRPCTransport
import KMSProto
import Testing
import TestSupport

/// A running plugin and objects labelled like root keys that are not p11kms root keys, made with pkcs11-tool in
/// the plugin's real SoftHSM token.
@Suite("Root key integrity in a running plugin")
struct KeyIntegrityTests {
    private func rows(_ plugin: PluginProcess) throws -> [[String: Any]] {
        let result = try plugin.run(["keys", "--format", "json", "--http", "off"] + plugin.tokenArguments)
        #expect(result.status == 0, "\(result.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        return try #require(object["keys"] as? [[String: Any]])
    }

    @Test("an extractable key and then a twin of the current key: Status names them, keys shows them invalid, never used")
    func invalidObjects() throws {
        let plugin = try PluginProcess(name: "integrity")
        let port = freePort()
        try plugin.start(["--http-listen", "127.0.0.1:\(port)", "--probe-interval", "0.5"])
        let invalidSeries = "p11kms_root_keys{state=\"invalid\"}"
        #expect(metricValue(try httpGet(port: port, path: "/metrics").body, invalidSeries) == 0)
        let client = try plugin.client()
        let seed = randomBytes(32)
        let wrapped = try client.encrypt(seed)
        let genuineHex = String(plugin.initialKeyID.dropFirst("p11kms-".count))

        // An extractable, non-sensitive AES-256 key with a newer root-key label.
        let strayLabel = "p11kms-root-g999999-20270115T080000Z"
        let strayHex = "00112233445566778899aabbccddeeff"
        try plugin.hsm.generateKeyWithTool(token: plugin.tokenLabel, label: strayLabel, idHex: strayHex,
                                           attributes: ["--extractable", "--private"])
        #expect(try waitUntil(10) { try client.status().healthz != "ok" })
        let status = try client.status()
        #expect(status.healthz.contains(strayLabel) && status.healthz.contains("p11kms-\(strayHex)"), "\(status.healthz)")
        #expect(status.healthz.contains("extractable"))
        #expect(status.keyID == plugin.initialKeyID, "the stray object never becomes current")
        let encrypted = try client.encrypt(seed)
        #expect(encrypted.keyID == plugin.initialKeyID)
        #expect(try client.decrypt(encrypted.ciphertext, keyID: encrypted.keyID) == seed)
        var listed = try rows(plugin)
        let stray = try #require(listed.first { $0["label"] as? String == strayLabel })
        #expect(stray["state"] as? String == "invalid" && stray["key_id"] as? String == "p11kms-\(strayHex)")
        #expect((stray["reason"] as? String)?.contains("extractable") == true)
        #expect(listed.first { $0["key_id"] as? String == plugin.initialKeyID }?["state"] as? String == "current")
        #expect(metricValue(try httpGet(port: port, path: "/metrics").body, invalidSeries) == 1)
        let text = try plugin.run(["keys", "--http", "off"] + plugin.tokenArguments)
        #expect(text.stdout.contains("invalid") && text.stderr.contains(strayLabel))

        // A second object with the current key's CKA_ID and label: both are invalid, nothing encrypts or decrypts.
        let label = try #require(listed.first { $0["key_id"] as? String == plugin.initialKeyID }?["label"] as? String)
        try plugin.hsm.generateKeyWithTool(token: plugin.tokenLabel, label: label, idHex: genuineHex,
                                           attributes: ["--sensitive", "--private"])
        #expect(try waitUntil(10) { try client.status().healthz.contains("CKA_ID shared") })
        expectStatus(.unavailable) { _ = try client.encrypt(seed) }
        expectStatus(.failedPrecondition) { _ = try client.decrypt(wrapped.ciphertext, keyID: wrapped.keyID) }
        listed = try rows(plugin)
        let twins = listed.filter { $0["key_id"] as? String == plugin.initialKeyID }
        #expect(twins.count == 2 && twins.allSatisfy { $0["state"] as? String == "invalid" }, "\(listed)")
        let metrics = try httpGet(port: port, path: "/metrics").body
        #expect(metricValue(metrics, invalidSeries) == 3)
        #expect(metricValue(metrics, "p11kms_root_keys{state=\"current\"}") == 0)
        #expect(plugin.process?.isRunning == true)
    }
}

import Foundation
import GRPCTransport
import KMSProto
import Testing
import TestSupport

/// The labelled value of one series on /metrics, e.g. series("p11kms_key_operations_total", ["key_id": k, "operation": "encrypt"]).
private func value(_ metrics: String, _ name: String, _ labels: KeyValuePairs<String, String>) -> Double? {
    metricValue(metrics, name + "{" + labels.map { "\($0.key)=\"\($0.value)\"" }.joined(separator: ",") + "}")
}

private func wallClock() -> Double { Date().timeIntervalSince1970 }

@Suite("Per-key usage: metrics of a running plugin and 'p11kms keys --http'")
struct KeyUsageTests {
    @Test("counts and last-use times per key and operation; the current key and each key's state follow rotate and retire")
    func perKeyMetrics() throws {
        let plugin = try PluginProcess(name: "keyuse")
        let port = freePort()
        try plugin.start(["--http-listen", "127.0.0.1:\(port)", "--probe-interval", "0.5"])
        let first = plugin.initialKeyID
        let client = try plugin.client()
        let metrics = { try httpGet(port: port, path: "/metrics").body }
        var before = try metrics()
        #expect(value(before, "p11kms_current_key_info", ["key_id": first]) == 1)
        #expect(value(before, "p11kms_root_key_info", ["key_id": first, "state": "current"]) == 1)
        #expect(value(before, "p11kms_key_operations_total", ["key_id": first, "operation": "encrypt"]) == nil)

        let start = wallClock().rounded(.down)
        var wrapped: [V2_EncryptResponse] = []
        for _ in 0..<3 { wrapped.append(try client.encrypt(randomBytes(32))) }
        for response in wrapped.prefix(2) { _ = try client.decrypt(response.ciphertext, keyID: response.keyID) }
        // A failed Decrypt is no use of the key.
        expectStatus(.invalidArgument) { _ = try client.decrypt(Data([1, 2, 3]), keyID: first) }
        let end = wallClock()
        var after = try metrics()
        #expect(value(after, "p11kms_key_operations_total", ["key_id": first, "operation": "encrypt"]) == 3)
        #expect(value(after, "p11kms_key_operations_total", ["key_id": first, "operation": "decrypt"]) == 2)
        #expect(value(after, "p11kms_root_key_operations_total", ["key_id": first, "operation": "decrypt"]) == 2)
        for operation in ["encrypt", "decrypt"] {
            let used = try #require(value(after, "p11kms_key_last_used_timestamp_seconds", ["key_id": first, "operation": operation]))
            #expect(used >= start && used <= end, "\(operation) last used at \(used), calls between \(start) and \(end)")
        }
        let keysJSON = try plugin.run(["keys", "--format", "json", "--http", "off"] + plugin.tokenArguments).stdout
        let created = try #require(try keyRows(keysJSON).first?["created"] as? String)
        let createdSeconds = try #require(ISO8601DateFormatter().date(from: created)).timeIntervalSince1970
        #expect(value(after, "p11kms_root_key_created_timestamp_seconds", ["key_id": first]) == createdSeconds)

        // Rotation: the current-key series moves to the new key (the old one is removed, not zeroed).
        let rotated = try plugin.run(["rotate"] + plugin.tokenArguments)
        let second = rotated.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(rotated.status == 0 && second != first)
        #expect(try waitUntil(10) { value(try metrics(), "p11kms_current_key_info", ["key_id": second]) == 1 })
        _ = try client.encrypt(randomBytes(32))
        _ = try client.decrypt(wrapped[2].ciphertext, keyID: first)
        after = try metrics()
        #expect(!after.contains("p11kms_current_key_info{key_id=\"\(first)\"}"))
        #expect(value(after, "p11kms_root_key_info", ["key_id": first, "state": "active"]) == 1)
        #expect(!after.contains("p11kms_root_key_info{key_id=\"\(first)\",state=\"current\"}"))
        #expect(value(after, "p11kms_root_key_info", ["key_id": second, "state": "current"]) == 1)
        #expect(value(after, "p11kms_key_operations_total", ["key_id": second, "operation": "encrypt"]) == 1)
        #expect(value(after, "p11kms_key_operations_total", ["key_id": first, "operation": "encrypt"]) == 3)
        #expect(value(after, "p11kms_key_operations_total", ["key_id": first, "operation": "decrypt"]) == 3)

        // Retire: the state series changes; destroy: the key's info series go, its usage counters stay.
        #expect(try plugin.run(["retire", first] + plugin.tokenArguments).status == 0)
        #expect(try waitUntil(10) { value(try metrics(), "p11kms_root_key_info", ["key_id": first, "state": "retired"]) == 1 })
        #expect(try plugin.run(["destroy", first, "--yes-destroy-forever"] + plugin.tokenArguments).status == 0)
        #expect(try waitUntil(10) { !(try metrics()).contains("p11kms_root_key_info{key_id=\"\(first)\"") })
        before = try metrics()
        #expect(!before.contains("p11kms_root_key_created_timestamp_seconds{key_id=\"\(first)\"}"))
        #expect(value(before, "p11kms_key_operations_total", ["key_id": first, "operation": "encrypt"]) == 3)
        #expect(value(before, "p11kms_root_keys", ["state": "current"]) == 1)
    }

    @Test("'p11kms keys' adds LAST_ENCRYPT and LAST_DECRYPT (and JSON fields) from a running plugin; unreachable: as before plus one note")
    func keysShowUsage() throws {
        let plugin = try PluginProcess(name: "keysuse")
        let port = freePort()
        try plugin.start(["--http-listen", "127.0.0.1:\(port)"])
        let key = plugin.initialKeyID
        let client = try plugin.client()
        let start = wallClock().rounded(.down)
        let response = try client.encrypt(randomBytes(32))
        let end = wallClock()
        // Without a plugin: the listing as it always was, and one note on stderr.
        let closed = freePort()
        let plain = try plugin.run(["keys", "--http", "127.0.0.1:\(closed)"] + plugin.tokenArguments)
        #expect(plain.status == 0)
        #expect(plain.stdout.split(separator: "\n").first?.split(separator: " ", omittingEmptySubsequences: true) == ["KEY_ID", "STATE", "CREATED", "LABEL"])
        #expect(plain.stderr.split(separator: "\n").count == 1 && plain.stderr.contains("127.0.0.1:\(closed)") && plain.stderr.contains("not shown"))
        let plainJSON = try plugin.run(["keys", "--format", "json", "--http", "127.0.0.1:\(closed)"] + plugin.tokenArguments)
        #expect(try keyRows(plainJSON.stdout).first.map { Set($0.keys) } == ["key_id", "label", "created", "state", "generation", "encryptions_reserved", "encryption_budget"])
        // `off` skips it without a note.
        let off = try plugin.run(["keys", "--http", "off"] + plugin.tokenArguments)
        #expect(off.status == 0 && off.stderr.isEmpty && off.stdout == plain.stdout)

        // With the plugin: the table gains two columns, after the existing ones.
        let table = try plugin.run(["keys", "--http", "127.0.0.1:\(port)"] + plugin.tokenArguments)
        #expect(table.status == 0 && table.stderr.isEmpty, "\(table.stderr)")
        let lines = table.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(lines.first == ["KEY_ID", "STATE", "CREATED", "LABEL", "LAST_ENCRYPT", "LAST_DECRYPT"])
        let row = try #require(lines.dropFirst().first { $0.first == key })
        #expect(row.count == 6 && row[5] == "-")
        let encrypted = try #require(ISO8601DateFormatter().date(from: row[4])).timeIntervalSince1970
        #expect(encrypted >= start && encrypted <= end)

        // JSON: fields added, the plugin named; the address also comes from P11KMS_HTTP_LISTEN (the serve setting).
        _ = try client.decrypt(response.ciphertext, keyID: key)
        let json = try plugin.run(["keys", "--format", "json"] + plugin.tokenArguments, environment: ["P11KMS_HTTP_LISTEN": "0.0.0.0:\(port)"])
        #expect(json.status == 0 && json.stderr.isEmpty, "\(json.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let plugged = try #require(try keyRows(json.stdout).first { $0["key_id"] as? String == key })
        #expect(plugged["encrypts"] as? Int == 1 && plugged["decrypts"] as? Int == 1)
        #expect(plugged["last_encrypt"] as? String == row[4])
        #expect((plugged["last_decrypt"] as? String).flatMap { ISO8601DateFormatter().date(from: $0) } != nil)
        #expect(plugged["state"] as? String == "current" && plugged["label"] != nil && plugged["generation"] as? Int == 1)
        let summary = try #require(object["plugin"] as? [String: Any])
        #expect(summary["current_key_id"] as? String == key)
        #expect(summary["metrics"] as? String == "http://127.0.0.1:\(port)/metrics")

        // A malformed address: a note naming the expected form, the plain listing.
        let notFound = try plugin.run(["keys", "--http", "nonsense"] + plugin.tokenArguments)
        #expect(notFound.status == 0 && notFound.stderr.contains("HOST:PORT") && notFound.stdout == plain.stdout)
    }

    private func keyRows(_ json: String) throws -> [[String: Any]] {
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        return try #require(object["keys"] as? [[String: Any]])
    }
}

import Foundation

/// What a running plugin saw of each key: read from its `/metrics` (`p11kms_key_last_used_timestamp_seconds`,
/// `p11kms_key_operations_total`, `p11kms_current_key_info`). Counts and times are that process's, since it started.
struct KeyUsage {
    struct Use {
        var lastEncrypt: Double?
        var lastDecrypt: Double?
        var encrypts: Double = 0
        var decrypts: Double = 0
    }

    let source: String
    var byKey: [String: Use] = [:]
    var currentKeyID: String?

    /// The plugin's usage, or nil (with one note on stderr) when it cannot be read. `flag` is `--http`; without it
    /// the `http-listen` setting (P11KMS_HTTP_LISTEN, the config file, default 127.0.0.1:8787) names the address
    /// `serve` listens on; a wildcard host is reached on loopback. `off` skips it quietly.
    static func fetch(flag: String?, settings: SettingsResolver, timeout: Double = 3) -> KeyUsage? {
        let address = settings.resolve("http-listen", flag: flag).value ?? "off"
        guard address != "off", !address.isEmpty else { return nil }
        var (host, port) = ("", 0)
        if address.hasPrefix("["), let close = address.firstIndex(of: "]") {
            host = String(address[address.index(after: address.startIndex)..<close])
            port = Int(address[address.index(after: close)...].drop { $0 == ":" }) ?? -1
        } else if let colon = address.lastIndex(of: ":") {
            host = String(address[..<colon])
            port = Int(address[address.index(after: colon)...]) ?? -1
        }
        guard !host.isEmpty, (1...65535).contains(port) else {
            note("--http must be HOST:PORT, e.g. 127.0.0.1:8787, got \"\(address)\"; key usage not shown")
            return nil
        }
        if host == "0.0.0.0" { host = "127.0.0.1" }
        if host == "::" { host = "::1" }
        let source = "http://\(host.contains(":") ? "[\(host)]" : host):\(port)/metrics"
        do {
            let (status, body) = try HTTPGet.fetch(host: host, port: port, path: "/metrics", timeout: timeout)
            guard status == 200 else {
                note("the plugin at \(source) answered HTTP \(status); key usage not shown")
                return nil
            }
            return KeyUsage(source: source, metrics: body)
        } catch {
            note("no running plugin answered at \(source) (\(error)); key usage not shown")
            return nil
        }
    }

    init(source: String, metrics: String) {
        self.source = source
        for sample in PrometheusText.samples(metrics) {
            guard let keyID = sample.labels["key_id"] else { continue }
            let operation = sample.labels["operation"]
            switch sample.name {
            case "p11kms_key_last_used_timestamp_seconds":
                if operation == "encrypt" { byKey[keyID, default: Use()].lastEncrypt = sample.value }
                if operation == "decrypt" { byKey[keyID, default: Use()].lastDecrypt = sample.value }
            case "p11kms_key_operations_total":
                if operation == "encrypt" { byKey[keyID, default: Use()].encrypts = sample.value }
                if operation == "decrypt" { byKey[keyID, default: Use()].decrypts = sample.value }
            case "p11kms_current_key_info" where sample.value == 1:
                currentKeyID = keyID
            default:
                break
            }
        }
    }

    /// JSON fields added to a key's row: times in RFC 3339 (null when never used), counts.
    func fields(_ keyID: String) -> [String: Any] {
        let use = byKey[keyID] ?? Use()
        return ["last_encrypt": use.lastEncrypt.map(KeyUsage.rfc3339) ?? NSNull(),
                "last_decrypt": use.lastDecrypt.map(KeyUsage.rfc3339) ?? NSNull(),
                "encrypts": Int(use.encrypts), "decrypts": Int(use.decrypts)]
    }

    /// Table cells added to a key's row (`LAST_ENCRYPT`, `LAST_DECRYPT`), `-` when never used.
    func cells(_ keyID: String) -> [String] {
        let use = byKey[keyID] ?? Use()
        return [use.lastEncrypt.map(KeyUsage.rfc3339) ?? "-", use.lastDecrypt.map(KeyUsage.rfc3339) ?? "-"]
    }

    /// Top-level JSON: where the usage came from and the plugin's current key.
    var summary: [String: Any] {
        ["metrics": source, "current_key_id": currentKeyID ?? NSNull()]
    }

    /// A note when the plugin's current key is not the token's (it refreshes every probe interval; another node's
    /// token may differ).
    func checkCurrent(_ tokenCurrent: String?) {
        if let currentKeyID, let tokenCurrent, currentKeyID != tokenCurrent {
            KeyUsage.note("the plugin at \(source) encrypts under \(currentKeyID), the token's current key is \(tokenCurrent)")
        }
    }

    static func rfc3339(_ seconds: Double) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: Date(timeIntervalSince1970: seconds.rounded(.down)))
    }

    static func note(_ message: String) {
        FileHandle.standardError.write(Data("p11kms: note: \(message)\n".utf8))
    }
}

/// The Prometheus text format, as far as `keys` needs it: sample lines `name{label="value",...} value [timestamp]`.
enum PrometheusText {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    static func samples(_ text: String) -> [Sample] {
        text.split(separator: "\n").compactMap { line in
            line.hasPrefix("#") ? nil : sample(Array(line.utf8))
        }
    }

    static func sample(_ line: [UInt8]) -> Sample? {
        var i = 0
        while i < line.count, line[i] != UInt8(ascii: "{"), line[i] != UInt8(ascii: " ") { i += 1 }
        let name = String(decoding: line[0..<i], as: UTF8.self)
        var labels: [String: String] = [:]
        if i < line.count, line[i] == UInt8(ascii: "{") {
            i += 1
            while i < line.count, line[i] != UInt8(ascii: "}") {
                let keyStart = i
                while i < line.count, line[i] != UInt8(ascii: "=") { i += 1 }
                let key = String(decoding: line[keyStart..<i], as: UTF8.self).trimmingCharacters(in: .whitespaces)
                guard i + 1 < line.count, line[i + 1] == UInt8(ascii: "\"") else { return nil }
                i += 2
                var value: [UInt8] = []
                while i < line.count, line[i] != UInt8(ascii: "\"") {
                    if line[i] == UInt8(ascii: "\\"), i + 1 < line.count {
                        i += 1
                        value.append(line[i] == UInt8(ascii: "n") ? UInt8(ascii: "\n") : line[i])
                    } else {
                        value.append(line[i])
                    }
                    i += 1
                }
                guard i < line.count else { return nil }
                labels[key] = String(decoding: value, as: UTF8.self)
                i += 1
                if i < line.count, line[i] == UInt8(ascii: ",") { i += 1 }
            }
            i += 1
        }
        let rest = String(decoding: line[min(i, line.count)...], as: UTF8.self).split(separator: " ")
        guard !name.isEmpty, let first = rest.first, let value = Double(first) else { return nil }
        return Sample(name: name, labels: labels, value: value)
    }
}

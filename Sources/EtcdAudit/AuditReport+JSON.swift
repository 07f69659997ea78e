/// `--format json`: one object,
/// `{"summary": {"total": N, "by_state": {...}}, "secrets": [{"namespace", "name", "state", "provider", "key_id"}]}`
/// with every state present in `by_state`, plus `"verify"` when `--verify` ran. Written by hand: keys in this order
/// and fast for 100,000 Secrets.
extension AuditReport {
    public func renderJSON() -> String {
        var out = ""
        out.reserveCapacity(128 + secrets.count * 120)
        out += "{\"summary\": {\"total\": \(total), \"by_state\": {"
        let counts = countsByState
        out += SecretState.reportOrder.map { "\(JSON.quote($0.rawValue)): \(counts[$0] ?? 0)" }.joined(separator: ", ")
        out += "}}, \"secrets\": ["
        for (i, secret) in secrets.enumerated() {
            if i > 0 { out += "," }
            out += "\n  {\"namespace\": "
            JSON.append(secret.namespace, to: &out)
            out += ", \"name\": "
            JSON.append(secret.name, to: &out)
            out += ", \"state\": \""
            out += secret.state.rawValue
            out += "\", \"provider\": "
            JSON.append(secret.provider, to: &out)
            out += ", \"key_id\": "
            JSON.append(secret.keyID, to: &out)
            out += "}"
        }
        out += secrets.isEmpty ? "]" : "\n]"
        if let verification {
            out += ", \"verify\": {\"checked\": \(verification.checked), \"failed\": ["
            for (i, failure) in verification.failures.enumerated() {
                if i > 0 { out += "," }
                out += "\n  {\"key_id\": \(JSON.quote(failure.keyID)), \"error\": \(JSON.quote(failure.message)), \"secrets\": ["
                out += failure.secrets.map(JSON.quote).joined(separator: ", ")
                out += "]}"
            }
            out += verification.failures.isEmpty ? "]}" : "\n]}"
        }
        out += "}\n"
        return out
    }
}

enum JSON {
    static func quote(_ string: String) -> String {
        var out = ""
        append(string, to: &out)
        return out
    }

    static func append(_ string: String, to out: inout String) {
        out += "\""
        var needsEscape = false
        for byte in string.utf8 where byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
            needsEscape = true
            break
        }
        if !needsEscape {
            out += string
        } else {
            for scalar in string.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                case let c where c.value < 0x20:
                    let hex = String(c.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                default: out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}

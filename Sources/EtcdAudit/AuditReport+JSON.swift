import Foundation

/// `--format json`: one object,
/// `{"summary": {"total": N, "by_state": {...}, "by_resource": {...}}, "scope": {...}, "plugin": {...},
/// "secrets": [{"namespace", "name", "state", "provider", "key_id", "resource", "detail"}]}` with every state present
/// in `by_state`, plus `"verify"` when `--verify` ran. `scope` is what `destroy --audit-json` checks (AuditProof).
/// Written by hand: keys in this order and fast for 100,000 Secrets. `detail` holds names and reasons, never
/// stored content.
extension AuditReport {
    /// Bumped when the meaning of a field changes; fields are only ever added.
    public static let jsonFormatVersion = 2

    /// RFC 3339 in UTC, whole seconds.
    public static func rfc3339(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }

    public func renderJSON() -> String {
        var out = ""
        out.reserveCapacity(128 + secrets.count * 120)
        out += "{\"summary\": {\"total\": \(total), \"by_state\": {"
        let counts = countsByState
        out += SecretState.reportOrder.map { "\(JSON.quote($0.rawValue)): \(counts[$0] ?? 0)" }.joined(separator: ", ")
        out += "}, \"by_resource\": {"
        out += countsByResource.map { "\(JSON.quote($0.resource)): \($0.count)" }.joined(separator: ", ")
        out += "}}, \"format_version\": \(Self.jsonFormatVersion), \"scope\": {\"provider\": \(JSON.quote(scope.provider))"
        out += ", \"etcd_prefix\": \(JSON.quote(scope.etcdPrefix))"
        out += ", \"resources\": [\(scope.resources.map(JSON.quote).joined(separator: ", "))]"
        out += ", \"namespaces\": [\(scope.namespaces.map(JSON.quote).joined(separator: ", "))]"
        out += ", \"name_filter\": \(JSON.quote(scope.nameFilter))"
        out += ", \"prefixes\": [\(scope.prefixes.map(JSON.quote).joined(separator: ", "))]"
        out += ", \"revision\": \(scope.revision), \"time\": \(JSON.quote(Self.rfc3339(scope.time)))"
        out += ", \"complete\": \(scope.complete)}"
        out += ", \"plugin\": {\"key_id\": \(JSON.quote(plugin.keyID)), \"healthz\": \(JSON.quote(plugin.healthz))"
        out += ", \"version\": \(JSON.quote(plugin.version))}"
        out += ", \"secrets\": ["
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
            out += ", \"resource\": "
            JSON.append(secret.resource, to: &out)
            out += ", \"detail\": "
            JSON.append(secret.detail, to: &out)
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

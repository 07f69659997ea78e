import Foundation

/// The output of `p11kms audit --format json` read back as the proof `destroy --audit-json` needs that nothing is
/// stored under a key. `parse` and `refusals` are pure functions of their arguments (safe to fuzz): no I/O, no clock.
///
/// The rules (README "Auditing etcd"): the audit must be complete (every namespace, no `--fabric` filter), of the
/// expected etcd prefix, cover Secrets, be at most `maxAge` old, have found at least one value, and list no value
/// under the key, no value of its own provider whose key it cannot tell, and no data key `--verify` could not unwrap.
public struct AuditProof: Sendable, Equatable {
    public struct Row: Sendable, Equatable, Decodable {
        public var namespace: String
        public var name: String
        public var state: String
        public var provider: String
        public var key_id: String
        public var resource: String?
        public var detail: String?

        public var displayName: String {
            let path = namespace.isEmpty ? name : "\(namespace)/\(name)"
            if let resource, resource != "secrets" { return "\(resource) \(path)" }
            return path
        }
    }

    public struct Scope: Sendable, Equatable, Decodable {
        public var provider: String
        public var etcd_prefix: String
        public var resources: [String]
        public var namespaces: [String]
        public var name_filter: String
        public var revision: Int64
        public var time: String
    }

    struct Summary: Decodable { var total: Int }
    struct Verify: Decodable { var failed: [Failure]; struct Failure: Decodable { var key_id: String } }
    struct Document: Decodable {
        var summary: Summary
        var scope: Scope?
        var secrets: [Row]
        var verify: Verify?
    }

    public var total: Int
    /// Nil for an audit made before the scope was recorded.
    public var scope: Scope?
    public var rows: [Row]
    /// Key_ids of the data keys `--verify` could not unwrap; nil without `--verify`.
    public var verifyFailures: [String]?

    /// Parses the JSON; throws a message naming what is missing.
    public static func parse(_ bytes: Data) throws(AuditProofError) -> AuditProof {
        let document: Document
        do {
            document = try JSONDecoder().decode(Document.self, from: bytes)
        } catch {
            throw AuditProofError("not the JSON output of 'p11kms audit --format json' (\(Self.describe(error)))")
        }
        return AuditProof(total: document.summary.total, scope: document.scope, rows: document.secrets,
                          verifyFailures: document.verify.map { $0.failed.map(\.key_id) })
    }

    /// Why this audit does not prove `keyID` unused; empty when it does. `now` and `maxAge` (seconds) bound the
    /// audit's age; `etcdPrefix` is the apiserver's `--etcd-prefix`.
    public func refusals(keyID: String, now: Date, maxAge: Double, etcdPrefix: String = "/registry") -> [String] {
        var out: [String] = []
        guard let scope else {
            return ["it records no scope (made by an older p11kms): run 'p11kms audit --format json' again"]
        }
        if !scope.namespaces.isEmpty {
            out.append("it was limited to namespace(s) \(scope.namespaces.joined(separator: ", ")): audit every namespace")
        }
        if !scope.name_filter.isEmpty {
            out.append("it was limited by --\(scope.name_filter): audit without it")
        }
        let expected = EtcdKeys.normalizedPrefix(etcdPrefix)
        if EtcdKeys.normalizedPrefix(scope.etcd_prefix) != expected {
            out.append("it read etcd prefix \(scope.etcd_prefix), not \(expected) (give destroy --etcd-prefix if the apiserver uses another)")
        }
        if !scope.resources.contains("secrets") {
            out.append("it did not cover secrets (resources: \(scope.resources.joined(separator: ", ")))")
        }
        if let time = Self.date(scope.time) {
            let age = now.timeIntervalSince(time)
            if age > maxAge {
                out.append("it is \(Self.duration(age)) old, more than --audit-max-age \(Self.duration(maxAge)): run the audit again")
            } else if age < -300 {
                out.append("its time \(scope.time) is in the future: check the clocks and run the audit again")
            }
        } else {
            out.append("its time \"\(scope.time)\" is not an RFC 3339 time")
        }
        if total == 0 || rows.isEmpty {
            out.append("it found nothing under \(scope.etcd_prefix) (wrong --prefix, --resources or etcd?)")
        }
        let using = rows.filter { $0.key_id == keyID }
        if !using.isEmpty {
            let names = using.prefix(10).map(\.displayName).joined(separator: ", ")
            out.append("it lists \(using.count) value(s) still stored under \(keyID), e.g. \(names): re-encrypt them first")
        }
        let untold = rows.filter { $0.provider == scope.provider && $0.key_id.isEmpty }
        if !untold.isEmpty {
            let names = untold.prefix(10).map { "\($0.displayName) (\($0.state))" }.joined(separator: ", ")
            out.append("it lists \(untold.count) value(s) of provider \(scope.provider) whose key it cannot tell, e.g. \(names): rewrite or delete them first")
        }
        if let failures = verifyFailures, !failures.isEmpty {
            out.append("--verify could not unwrap \(failures.count) data key(s): resolve them first")
        }
        return out
    }

    static func date(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text)
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        if s >= 3600 { return s % 3600 / 60 == 0 ? "\(s / 3600)h" : "\(s / 3600)h\(s % 3600 / 60)m" }
        if s >= 60 { return "\(s / 60)m\(s % 60 == 0 ? "" : "\(s % 60)s")" }
        return "\(s)s"
    }

    /// Parses `3600`, `90s`, `30m`, `1h`, `2h30m`, `1d` into seconds; nil for anything else or zero.
    public static func parseDuration(_ text: String) -> Double? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if let plain = Double(trimmed) { return plain > 0 && plain.isFinite ? plain : nil }
        var total = 0.0
        var number = ""
        for c in trimmed {
            if c.isNumber || c == "." {
                number.append(c)
                continue
            }
            guard let value = Double(number) else { return nil }
            switch c {
            case "s": total += value
            case "m": total += value * 60
            case "h": total += value * 3600
            case "d": total += value * 86400
            default: return nil
            }
            number = ""
        }
        guard number.isEmpty, total > 0 else { return nil }
        return total
    }

    static func describe(_ error: any Error) -> String {
        switch error as? DecodingError {
        case .keyNotFound(let key, let context)?:
            return "no \"\((context.codingPath.map(\.stringValue) + [key.stringValue]).joined(separator: "."))\""
        case .typeMismatch(_, let context)?, .valueNotFound(_, let context)?:
            return "\"\(context.codingPath.map(\.stringValue).joined(separator: "."))\" has the wrong type"
        case .dataCorrupted?:
            return "not valid JSON"
        default:
            return "unreadable"
        }
    }
}

public struct AuditProofError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

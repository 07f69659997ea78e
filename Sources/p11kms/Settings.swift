import ArgumentParser
import Foundation
import Yams

/// Where a setting's value came from. Precedence: flag > environment > config file > default.
enum SettingSource: CustomStringConvertible {
    case flag
    case environment(String)
    case file(String)
    case defaultValue

    var description: String {
        switch self {
        case .flag: return "flag"
        case .environment(let name): return "environment \(name)"
        case .file(let path): return "file \(path)"
        case .defaultValue: return "default"
        }
    }
}

struct ResolvedSetting {
    let key: String
    let value: String?
    let source: SettingSource
}

/// Every setting, its environment twin and default. Keys are the long flag names; the config file uses them too.
enum SettingKeys {
    static let table: [(key: String, env: String, defaultValue: String?)] = [
        ("listen", "P11KMS_LISTEN", "unix:///var/run/kms/p11kms.sock"),
        ("module", "P11KMS_MODULE", "/usr/lib/softhsm/libsofthsm2.so"),
        ("token-label", "P11KMS_TOKEN_LABEL", nil),
        ("pin-file", "P11KMS_PIN_FILE", nil),
        ("softhsm-conf", "P11KMS_SOFTHSM_CONF", nil),
        ("max-sessions", "P11KMS_MAX_SESSIONS", "8"),
        ("socket-mode", "P11KMS_SOCKET_MODE", "0600"),
        ("socket-group", "P11KMS_SOCKET_GROUP", nil),
        ("status-version", "P11KMS_STATUS_VERSION", "v2"),
        ("disable-v1", "P11KMS_DISABLE_V1", "false"),
        ("worker-threads", "P11KMS_WORKER_THREADS", "4"),
        ("completion-queue-threads", "P11KMS_CQ_THREADS", "1"),
        ("http-listen", "P11KMS_HTTP_LISTEN", "127.0.0.1:8787"),
        ("log-format", "P11KMS_LOG_FORMAT", "text"),
        ("log-level", "P11KMS_LOG_LEVEL", "info"),
        ("shutdown-grace", "P11KMS_SHUTDOWN_GRACE", "5"),
        ("probe-interval", "P11KMS_PROBE_INTERVAL", "2"),
        ("canary-interval", "P11KMS_CANARY_INTERVAL", "10"),
    ]

    static func env(for key: String) -> String {
        table.first { $0.key == key }!.env
    }
}

/// The config file (YAML, or JSON, which YAML reads too) and the environment, resolved against flags.
struct SettingsResolver {
    let environment: [String: String]
    let file: [String: String]
    let filePath: String?

    init(configPath: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        self.environment = environment
        let path = configPath ?? environment["P11KMS_CONFIG"]
        self.filePath = path
        self.file = try path.map(SettingsResolver.load) ?? [:]
    }

    /// Reads a flat map of setting keys to scalar values; unknown keys (typos) and a PIN are refused.
    static func load(_ path: String) throws -> [String: String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("cannot read the config file \(path)")
        }
        let parsed: Any?
        do {
            parsed = try Yams.load(yaml: String(decoding: data, as: UTF8.self))
        } catch {
            throw ValidationError("the config file \(path) is not valid YAML or JSON: \(error)")
        }
        guard let parsed else { return [:] }
        guard let map = parsed as? [String: Any] else {
            throw ValidationError("the config file \(path) must be a map of settings")
        }
        var values: [String: String] = [:]
        for (key, value) in map {
            if key == "pin" {
                throw ValidationError("the config file \(path) must not hold the PIN; use pin-file or P11KMS_PIN")
            }
            guard SettingKeys.table.contains(where: { $0.key == key }) else {
                throw ValidationError("unknown setting \"\(key)\" in \(path); known: \(SettingKeys.table.map(\.key).joined(separator: ", "))")
            }
            switch value {
            case let string as String: values[key] = string
            case let bool as Bool: values[key] = bool ? "true" : "false"
            case let int as Int: values[key] = String(int)
            case let double as Double: values[key] = String(double)
            default: throw ValidationError("setting \"\(key)\" in \(path) must be a single value")
            }
        }
        return values
    }

    func resolve(_ key: String, flag: String?) -> ResolvedSetting {
        let entry = SettingKeys.table.first { $0.key == key }!
        if let flag { return ResolvedSetting(key: key, value: flag, source: .flag) }
        if let value = environment[entry.env], !value.isEmpty {
            return ResolvedSetting(key: key, value: value, source: .environment(entry.env))
        }
        if let value = file[key], let filePath { return ResolvedSetting(key: key, value: value, source: .file(filePath)) }
        return ResolvedSetting(key: key, value: entry.defaultValue, source: .defaultValue)
    }

    func int(_ key: String, flag: String?, range: ClosedRange<Int>) throws -> Int {
        let setting = resolve(key, flag: flag)
        guard let text = setting.value, let value = Int(text), range.contains(value) else {
            throw ValidationError("\(key) must be a whole number in \(range.lowerBound)...\(range.upperBound) (from \(setting.source))")
        }
        return value
    }

    func seconds(_ key: String, flag: String?) throws -> Duration {
        let setting = resolve(key, flag: flag)
        guard let text = setting.value, let value = Double(text), value > 0, value <= 3600 else {
            throw ValidationError("\(key) must be a number of seconds greater than 0 (from \(setting.source))")
        }
        return .milliseconds(Int(value * 1000))
    }

    func bool(_ key: String, flag: Bool) throws -> Bool {
        let setting = resolve(key, flag: flag ? "true" : nil)
        switch setting.value?.lowercased() {
        case "true", "yes", "1": return true
        case "false", "no", "0", nil: return false
        default: throw ValidationError("\(key) must be true or false (from \(setting.source))")
        }
    }
}

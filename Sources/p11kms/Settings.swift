import ArgumentParser
import Foundation
import ConfigFile

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

    /// Reads a flat map of setting keys to scalar values, each as written (see `ConfigFile.parse`); unknown keys
    /// (typos), a value that is a map or a list, and a PIN are refused.
    static func load(_ path: String) throws -> [String: String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("cannot read the config file \(path)")
        }
        do {
            return try ConfigFile.parse(Array(data), path: path)
        } catch {
            throw ValidationError(error.description)
        }
    }

    func resolve(_ key: String, flag: String?) -> ResolvedSetting {
        let entry = SettingKeys.entry(key)!
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
            throw ValidationError("\(key) must be a whole number in \(range.lowerBound)...\(range.upperBound), e.g. \(key): \(example(key)) (from \(setting.source))")
        }
        return value
    }

    func seconds(_ key: String, flag: String?) throws -> Duration {
        let setting = resolve(key, flag: flag)
        guard let text = setting.value, let value = Double(text), value > 0, value <= 3600 else {
            throw ValidationError("\(key) must be a number of seconds greater than 0, e.g. \(key): \(example(key)) (from \(setting.source))")
        }
        return .milliseconds(Int(value * 1000))
    }

    func bool(_ key: String, flag: Bool) throws -> Bool {
        try bool(key, text: flag ? "true" : nil)
    }

    /// A boolean whose flag takes a value (`--name=false`), so that it can turn a default of true off.
    func bool(_ key: String, text flag: String?) throws -> Bool {
        let setting = resolve(key, flag: flag)
        switch setting.value?.lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0", nil: return false
        default: throw ValidationError("\(key) must be true or false, e.g. \(key): \(example(key)) (from \(setting.source))")
        }
    }

    /// Permission bits written in octal, whatever the source: "0660" from a flag, the environment or the file.
    func octalMode(_ key: String, flag: String?) throws -> UInt32 {
        let setting = resolve(key, flag: flag)
        guard let value = setting.value.flatMap(SettingKeys.octalMode) else {
            throw ValidationError("\(key) must be octal permission bits, e.g. \(key): \"\(example(key))\" (from \(setting.source))")
        }
        return value
    }

    /// The value as --print-config shows it: modes in octal with a leading 0, YAML-quoted where needed.
    func printable(_ setting: ResolvedSetting) -> String {
        guard var value = setting.value else { return "~" }
        if SettingKeys.entry(setting.key)?.kind == .octalMode, let mode = SettingKeys.octalMode(value) {
            value = SettingKeys.octalText(mode)
        }
        return value.contains(":") || value.contains("#") ? "\"\(value)\"" : value
    }

    private func example(_ key: String) -> String { SettingKeys.entry(key)?.example ?? "" }
}

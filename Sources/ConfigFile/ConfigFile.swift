import Foundation
import Yams

/// A config file that cannot be used: the message names the file, the key and, for a value of the wrong shape, an
/// example of a valid one.
public struct ConfigFileError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The config file (YAML, or JSON, which YAML reads too): a flat map of setting keys to scalar values.
///
/// Every value keeps the text it was written with. The YAML parser is asked for the document's nodes, never for
/// decoded values, so YAML 1.1's implicit types do not apply: `socket-mode: 0660` is the text "0660" (not the
/// integer 432), `http-listen: off` is "off" (not false) and `token-label: 0123` is "0123" (not 83). What the text
/// means is decided per setting when it is resolved, the same way for a flag, the environment and the file.
public enum ConfigFile {
    /// Parses the file's bytes. `path` is only used in messages. A plain `~`, `null` or empty value leaves the
    /// setting unset (its default applies); quoted, it is the text.
    public static func parse(_ bytes: [UInt8], path: String) throws(ConfigFileError) -> [String: String] {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigFileError("the config file \(path) is not UTF-8 text")
        }
        let root: Node?
        do {
            root = try Parser(yaml: text).singleRoot()
        } catch {
            throw ConfigFileError("the config file \(path) is not valid YAML or JSON: \(error)")
        }
        guard let root else { return [:] }
        if case .scalar(let scalar) = root, isNull(scalar) { return [:] }
        guard case .mapping(let mapping) = root else {
            throw ConfigFileError("the config file \(path) must be a map of settings, e.g. \"socket-mode: \\\"0660\\\"\"")
        }
        var values: [String: String] = [:]
        var seen: Set<String> = []
        for (keyNode, valueNode) in mapping {
            guard case .scalar(let keyScalar) = keyNode else {
                throw ConfigFileError("the config file \(path) has a key that is not a name; keys are setting names like socket-mode")
            }
            let key = keyScalar.string
            if key == "pin" {
                throw ConfigFileError("the config file \(path) must not hold the PIN; use pin-file or P11KMS_PIN")
            }
            guard let entry = SettingKeys.entry(key) else {
                throw ConfigFileError("unknown setting \"\(printable(key))\" in \(path); known: \(SettingKeys.table.map(\.key).joined(separator: ", "))")
            }
            guard seen.insert(key).inserted else {
                throw ConfigFileError("setting \"\(key)\" appears twice in \(path)")
            }
            guard case .scalar(let scalar) = valueNode else {
                let shape = valueNode.mapping != nil ? "a map" : valueNode.sequence != nil ? "a list" : "not a single value"
                throw ConfigFileError("setting \"\(key)\" in \(path) is \(shape); it takes a single value, e.g. \(key): \(entry.example)")
            }
            if isNull(scalar) { continue }
            values[key] = scalar.string
        }
        return values
    }

    /// A plain (unquoted) `~`, `null` or nothing: YAML's "no value".
    static func isNull(_ scalar: Node.Scalar) -> Bool {
        scalar.style == .plain && ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    /// The key as it can be shown on one line.
    static func printable(_ text: String) -> String {
        let limited = text.count > 64 ? String(text.prefix(64)) + "…" : text
        return limited.unicodeScalars.map { $0.properties.generalCategory == .control ? "?" : String($0) }.joined()
    }
}

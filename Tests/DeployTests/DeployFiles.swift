import Foundation
import TestSupport
import Yams

/// The values every deploy/ artifact and the README must agree on.
enum Canonical {
    static let endpoint = "unix:///var/run/kms/p11kms.sock"
    static let socketDirectory = "/var/run/kms"
    static let providerName = "p11kms"
    static let tokenLabel = "p11kms"
    static let tokenDirectory = "/var/lib/p11kms/softhsm/tokens"
    static let softHSMConf = "/etc/p11kms/softhsm2.conf"
    static let pinFile = "/etc/p11kms/pin"
    static let configFile = "/etc/p11kms/config.yaml"
    static let binary = "/usr/local/bin/p11kms"
    static let httpListen = "127.0.0.1:8787"
    static let encryptionConfig = "/etc/kubernetes/enc/encryption-config.yaml"
    static let encryptionConfigDirectory = "/etc/kubernetes/enc"
    static let encryptionConfigFlag = "--encryption-provider-config=/etc/kubernetes/enc/encryption-config.yaml"
    static let automaticReloadFlag = "--encryption-provider-config-automatic-reload=true"
    static let softHSMModule = "/usr/lib/softhsm/libsofthsm2.so"
}

/// The repository's files, found from this source file's path (Tests/DeployTests/ → the package root).
enum Repository {
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func url(_ relative: String) -> URL { root.appendingPathComponent(relative) }

    static func text(_ relative: String) throws -> String {
        try String(contentsOf: url(relative), encoding: .utf8)
    }

    /// Every YAML file under deploy/, as paths relative to the root, sorted.
    static func deployYAMLFiles() -> [String] {
        let deploy = url("deploy")
        guard let walker = FileManager.default.enumerator(at: deploy, includingPropertiesForKeys: nil) else { return [] }
        var files: [String] = []
        for case let file as URL in walker where ["yaml", "yml"].contains(file.pathExtension) {
            files.append("deploy/" + file.path.dropFirst(deploy.path.count + 1))
        }
        return files.sorted()
    }

    /// The one YAML document in `relative`, as plain values (dictionaries, arrays, strings, numbers, booleans).
    static func yaml(_ relative: String) throws -> Any {
        let documents = try yamlDocuments(relative)
        guard documents.count == 1 else { throw FixtureError("\(relative): expected one YAML document, found \(documents.count)") }
        return documents[0]
    }

    static func yamlDocuments(_ relative: String) throws -> [Any] {
        try Yams.load_all(yaml: text(relative)).map { $0 as Any }
    }
}

/// Small typed accessors over parsed YAML, failing with the path that did not match.
struct YAMLPath: Error, CustomStringConvertible {
    let description: String
}

extension Optional where Wrapped == Any {
    func mapping(_ what: String = "") throws -> [String: Any] {
        guard let value = self as? [String: Any] else { throw YAMLPath(description: "not a mapping: \(what) = \(String(describing: self))") }
        return value
    }

    func list(_ what: String = "") throws -> [Any] {
        guard let value = self as? [Any] else { throw YAMLPath(description: "not a list: \(what) = \(String(describing: self))") }
        return value
    }

    func string(_ what: String = "") throws -> String {
        guard let value = self as? String else { throw YAMLPath(description: "not a string: \(what) = \(String(describing: self))") }
        return value
    }
}

func asMap(_ value: Any, _ what: String = "") throws -> [String: Any] {
    guard let map = value as? [String: Any] else { throw YAMLPath(description: "not a mapping: \(what) = \(value)") }
    return map
}

func asList(_ value: Any?, _ what: String = "") throws -> [Any] {
    guard let list = value as? [Any] else { throw YAMLPath(description: "not a list: \(what) = \(String(describing: value))") }
    return list
}

/// A container of a Pod manifest: its command line split into flags, its environment, mounts and probes.
struct ContainerSpec {
    let name: String
    let command: [String]
    let environment: [String: String]
    /// mountPath → (volume name, readOnly)
    let mounts: [String: (volume: String, readOnly: Bool)]
    let raw: [String: Any]

    init(_ raw: [String: Any]) throws {
        self.raw = raw
        name = try (raw["name"]).string("container name")
        command = ((raw["command"] as? [Any]) ?? []).map { "\($0)" } + ((raw["args"] as? [Any]) ?? []).map { "\($0)" }
        var environment: [String: String] = [:]
        for entry in (raw["env"] as? [Any]) ?? [] {
            let entry = try asMap(entry, "env entry")
            environment[try entry["name"].string("env name")] = entry["value"].map { "\($0)" } ?? ""
        }
        self.environment = environment
        var mounts: [String: (volume: String, readOnly: Bool)] = [:]
        for mount in (raw["volumeMounts"] as? [Any]) ?? [] {
            let mount = try asMap(mount, "volumeMount")
            mounts[try mount["mountPath"].string("mountPath")] = (try mount["name"].string("mount name"), mount["readOnly"] as? Bool ?? false)
        }
        self.mounts = mounts
    }

    /// The value of `--name=value` or `--name value` on the command line.
    func flag(_ name: String) -> String? {
        for (index, argument) in command.enumerated() {
            if argument.hasPrefix("--\(name)=") { return String(argument.dropFirst(name.count + 3)) }
            if argument == "--\(name)", index + 1 < command.count { return command[index + 1] }
        }
        return nil
    }

    /// The mount whose mountPath is `path` or a parent folder of it.
    func mount(covering path: String) -> (mountPath: String, volume: String, readOnly: Bool)? {
        mounts.filter { path == $0.key || path.hasPrefix($0.key.hasSuffix("/") ? $0.key : $0.key + "/") }
            .max { $0.key.count < $1.key.count }
            .map { ($0.key, $0.value.volume, $0.value.readOnly) }
    }
}

/// The hostPath volumes of a Pod: volume name → host path.
func hostPathVolumes(_ volumes: [Any]) throws -> [String: String] {
    var result: [String: String] = [:]
    for volume in volumes {
        let volume = try asMap(volume, "volume")
        if let hostPath = volume["hostPath"] as? [String: Any] {
            result[try volume["name"].string("volume name")] = try hostPath["path"].string("hostPath.path")
        }
    }
    return result
}

/// The fenced code blocks of a Markdown text with the given info string (e.g. "yaml").
func fencedBlocks(_ markdown: String, language: String) -> [String] {
    var blocks: [String] = []
    var current: [Substring]?
    for line in markdown.split(separator: "\n", omittingEmptySubsequences: false) {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        if current == nil, trimmed == "```\(language)" {
            current = []
        } else if current != nil, trimmed == "```" {
            blocks.append(current!.joined(separator: "\n"))
            current = nil
        } else if current != nil {
            current!.append(line)
        }
    }
    return blocks
}

/// A systemd unit file: section → [(key, value)] in order (keys may repeat).
struct SystemdUnit {
    let sections: [String: [(key: String, value: String)]]

    init(_ text: String) {
        var sections: [String: [(key: String, value: String)]] = [:]
        var section = ""
        var pending = ""
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            var line = pending + rawLine.trimmingCharacters(in: .whitespaces)
            pending = ""
            if line.hasSuffix("\\") { pending = String(line.dropLast()) + " "; continue }
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("["), line.hasSuffix("]") { section = String(line.dropFirst().dropLast()); continue }
            guard let equals = line.firstIndex(of: "=") else { continue }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces)
            line = String(line[line.index(after: equals)...]).trimmingCharacters(in: .whitespaces)
            sections[section, default: []].append((key, line))
        }
        self.sections = sections
    }

    func values(_ section: String, _ key: String) -> [String] {
        (sections[section] ?? []).filter { $0.key == key }.map(\.value)
    }

    func value(_ section: String, _ key: String) -> String? { values(section, key).last }
}

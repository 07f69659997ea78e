/// A resource type of the EncryptionConfiguration (`secrets`, `configmaps`, `widgets.example.com`) and where
/// kube-apiserver keeps its objects in etcd: `<prefix>/<resource>/` for the core and built-in groups (a few under
/// historical names), `<prefix>/<group>/<resource>/` for custom resources. Objects are `<namespace>/<name>`, or
/// `<name>` for cluster-scoped types.
public struct ResourceType: Sendable, Hashable, CustomStringConvertible {
    /// As written: `configmaps`, `widgets.example.com`.
    public let name: String
    /// The path under the etcd prefix, without slashes at either end.
    public let path: String

    public var description: String { name }
    public var isSecrets: Bool { name == "secrets" }

    public static let secrets = ResourceType(name: "secrets", path: "secrets")

    /// Built-in storage paths that differ from the resource name.
    static let renamed: [String: String] = [
        "services": "services/specs", "endpoints": "services/endpoints", "nodes": "minions",
        "replicationcontrollers": "controllers", "ingresses": "ingress",
    ]

    private init(name: String, path: String) {
        self.name = name
        self.path = path
    }

    /// Parses `resource` or `resource.group` (lowercase, as in the EncryptionConfiguration). Wildcards (`*.*`,
    /// `*.apps`) are refused: list the types explicitly.
    public init(parsing text: String) throws(AuditError) {
        let name = text.trimmingCharacters(in: .whitespaces)
        guard !name.isEmpty else { throw AuditError(.configuration, "--resources: an empty resource name") }
        guard !name.contains("*") else {
            throw AuditError(.configuration, "--resources \(name): wildcards are not supported; list each resource type (e.g. secrets,configmaps)")
        }
        guard name.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d || $0 == 0x2e }),
              !name.hasPrefix("."), !name.hasSuffix("."), !name.contains("..") else {
            throw AuditError(.configuration, "--resources \(name): expected a lowercase resource type such as secrets, configmaps or widgets.example.com")
        }
        let parts = name.split(separator: ".", maxSplits: 1).map(String.init)
        let resource = parts[0]
        let group = parts.count > 1 ? parts[1] : ""
        let builtIn = group.isEmpty || !group.contains(".") || group.hasSuffix(".k8s.io")
        self.name = name
        self.path = builtIn ? (Self.renamed[resource] ?? resource) : "\(group)/\(resource)"
    }

    /// The list of `--resources`, duplicates removed, in the given order.
    public static func list(_ names: [String]) throws(AuditError) -> [ResourceType] {
        var seen = Set<String>()
        var out: [ResourceType] = []
        for name in names {
            let type = try ResourceType(parsing: name)
            if seen.insert(type.path).inserted { out.append(type) }
        }
        return out
    }
}

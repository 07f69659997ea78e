import Foundation
import TestSupport
import Yams

/// The parsed deploy/ artifacts the tests compare.
struct EncryptionConfig {
    let document: [String: Any]
    let providers: [[String: Any]]
    let kms: [String: Any]

    static func load(_ relative: String = "deploy/encryption-config.yaml") throws -> EncryptionConfig {
        try EncryptionConfig(asMap(Repository.yaml(relative), relative))
    }

    init(_ document: [String: Any]) throws {
        self.document = document
        let resources = try asList(document["resources"], "resources")
        guard resources.count == 1 else { throw YAMLPath(description: "expected one resources entry, found \(resources.count)") }
        let entry = try asMap(resources[0], "resources[0]")
        providers = try asList(entry["providers"], "providers").map { try asMap($0, "provider") }
        guard let first = providers.first, let kms = first["kms"] as? [String: Any] else {
            throw YAMLPath(description: "the first provider is not kms: \(providers)")
        }
        self.kms = kms
    }

    var resources: [String] {
        ((document["resources"] as? [Any])?.first as? [String: Any])?["resources"].flatMap { $0 as? [Any] }?.compactMap { $0 as? String } ?? []
    }

    var endpoint: String { kms["endpoint"] as? String ?? "" }
    /// The socket's path on the node (the endpoint without `unix://`).
    var socketPath: String { endpoint.hasPrefix("unix://") ? String(endpoint.dropFirst("unix://".count)) : "" }
}

struct StaticPod {
    let document: [String: Any]
    let spec: [String: Any]
    let plugin: ContainerSpec
    let initContainers: [ContainerSpec]
    /// volume name → host path
    let hostPaths: [String: String]

    static let path = "deploy/kubeadm/p11kms-static-pod.yaml"

    static func load() throws -> StaticPod {
        let document = try asMap(Repository.yaml(path), path)
        let spec = try document["spec"].mapping("spec")
        let containers = try asList(spec["containers"], "containers").map { try ContainerSpec(asMap($0, "container")) }
        guard containers.count == 1 else { throw YAMLPath(description: "expected one container, found \(containers.count)") }
        let initContainers = try ((spec["initContainers"] as? [Any]) ?? []).map { try ContainerSpec(asMap($0, "initContainer")) }
        return StaticPod(document: document, spec: spec, plugin: containers[0], initContainers: initContainers,
                         hostPaths: try hostPathVolumes(asList(spec["volumes"], "volumes")))
    }

    /// Where `path`, as seen inside `container`, is on the node (nil when no hostPath volume covers it).
    func hostPath(of path: String, in container: ContainerSpec) -> String? {
        guard let mount = container.mount(covering: path), let host = hostPaths[mount.volume] else { return nil }
        return host + path.dropFirst(mount.mountPath.count)
    }
}

/// deploy/kubeadm/patches/kube-apiserver+json.yaml: the JSON patch operations on kube-apiserver's static pod.
struct APIServerPatch {
    static let path = "deploy/kubeadm/patches/kube-apiserver+json.yaml"

    let operations: [[String: Any]]

    static func load() throws -> APIServerPatch {
        APIServerPatch(operations: try asList(Repository.yaml(path), path).map { try asMap($0, "patch operation") })
    }

    func values(at path: String) -> [Any] {
        operations.filter { $0["path"] as? String == path }.compactMap { $0["value"] }
    }

    var addedFlags: [String] { values(at: "/spec/containers/0/command/-").compactMap { $0 as? String } }

    /// The container that the patch produces, as far as these tests care (its added mounts).
    func container() throws -> ContainerSpec {
        try ContainerSpec(["name": "kube-apiserver", "command": addedFlags, "volumeMounts": values(at: "/spec/containers/0/volumeMounts/-")])
    }

    func hostPaths() throws -> [String: String] { try hostPathVolumes(values(at: "/spec/volumes/-")) }

    func hostPath(of path: String) throws -> String? {
        guard let mount = try container().mount(covering: path), let host = try hostPaths()[mount.volume] else { return nil }
        return host + path.dropFirst(mount.mountPath.count)
    }
}

/// A stable text form of a parsed YAML value (mapping keys sorted), to compare two values.
func canonicalForm(_ value: Any) -> String {
    if let map = value as? [String: Any] {
        return "{" + map.keys.sorted().map { "\($0): \(canonicalForm(map[$0]!))" }.joined(separator: ", ") + "}"
    }
    if let list = value as? [Any] { return "[" + list.map(canonicalForm).joined(separator: ", ") + "]" }
    return "\(value)"
}

/// Every string anywhere in a parsed YAML value, with the mapping keys on its path.
func allStrings(_ value: Any, path: String = "") -> [(path: String, value: String)] {
    if let map = value as? [String: Any] {
        return map.flatMap { key, child in [(path + "/" + key + "(key)", key)] + allStrings(child, path: path + "/" + key) }
    }
    if let list = value as? [Any] {
        return list.enumerated().flatMap { index, child in allStrings(child, path: path + "/\(index)") }
    }
    if let string = value as? String { return [(path, string)] }
    return []
}

/// Every mapping anywhere in a parsed YAML value.
func allMappings(_ value: Any) -> [[String: Any]] {
    if let map = value as? [String: Any] { return [map] + map.values.flatMap(allMappings) }
    if let list = value as? [Any] { return list.flatMap(allMappings) }
    return []
}

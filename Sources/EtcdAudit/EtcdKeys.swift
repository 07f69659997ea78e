/// Key layout of Kubernetes objects in etcd: `<prefix>/secrets/<namespace>/<name>` (PROTOCOL.md section 3).
public enum EtcdKeys {
    /// kube-apiserver normalises `--etcd-prefix` to `/x/`; returns the normalised form.
    public static func normalizedPrefix(_ prefix: String) -> String {
        var trimmed = Substring(prefix)
        while trimmed.hasPrefix("/") { trimmed = trimmed.dropFirst() }
        while trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        return trimmed.isEmpty ? "/" : "/" + trimmed + "/"
    }

    /// `<prefix>/secrets/`, or `<prefix>/secrets/<namespace>/` when a namespace is given.
    public static func secretsPrefix(etcdPrefix: String, namespace: String? = nil) -> [UInt8] {
        var key = normalizedPrefix(etcdPrefix) + "secrets/"
        if let namespace { key += namespace + "/" }
        return Array(key.utf8)
    }

    /// `<prefix>/<resource path>/`, or `<prefix>/<resource path>/<namespace>/` when a namespace is given.
    public static func resourcePrefix(etcdPrefix: String, resource: ResourceType, namespace: String? = nil) -> [UInt8] {
        var key = normalizedPrefix(etcdPrefix) + resource.path + "/"
        if let namespace { key += namespace + "/" }
        return Array(key.utf8)
    }

    /// The `range_end` covering every key that starts with `prefix` (etcd's `getPrefix`): the last byte below 0xff
    /// incremented and everything after it dropped; `\0` (to the end of the keyspace) when every byte is 0xff.
    public static func prefixEnd(_ prefix: [UInt8]) -> [UInt8] {
        var end = prefix
        while let last = end.last {
            if last < 0xff {
                end[end.count - 1] = last + 1
                return end
            }
            end.removeLast()
        }
        return [0]
    }

    /// The Secret's namespace and name from its key, given the length of the `<prefix>/secrets/` part; nil for keys
    /// that do not have the `<namespace>/<name>` shape.
    public static func secretName(key: UnsafeBufferPointer<UInt8>, secretsPrefixLength: Int) -> (namespace: String, name: String)? {
        objectName(key: key, prefixLength: secretsPrefixLength, clusterScoped: false)
    }

    /// An object's namespace and name from its key: `<namespace>/<name>`, or with `clusterScoped` also `<name>`
    /// (namespace empty); nil for other shapes.
    public static func objectName(key: UnsafeBufferPointer<UInt8>, prefixLength secretsPrefixLength: Int,
                                  clusterScoped: Bool) -> (namespace: String, name: String)? {
        guard key.count > secretsPrefixLength else { return nil }
        let rest = UnsafeBufferPointer(rebasing: key[secretsPrefixLength...])
        if clusterScoped, !rest.contains(UInt8(ascii: "/")) { return ("", String(decoding: rest, as: UTF8.self)) }
        guard let slash = rest.firstIndex(of: UInt8(ascii: "/")), slash > 0, slash < rest.count - 1 else { return nil }
        let name = UnsafeBufferPointer(rebasing: rest[(slash + 1)...])
        guard !name.contains(UInt8(ascii: "/")) else { return nil }
        return (String(decoding: UnsafeBufferPointer(rebasing: rest[..<slash]), as: UTF8.self),
                String(decoding: name, as: UTF8.self))
    }
}

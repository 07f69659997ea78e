/// The checks kube-apiserver applies to KMS v2 annotations (`validateAnnotations`): each key a fully qualified
/// domain name (lowercase RFC 1123 subdomain of at most 253 characters with at least two labels, optional trailing
/// dot) and keys plus values at most 32 KiB in total.
enum Annotations {
    static let maxTotalSize = 32 * 1024

    static func validate(_ annotations: [String: [UInt8]]) -> String? {
        var total = 0
        for (key, value) in annotations {
            guard isFullyQualifiedDomainName(key) else { return "annotation key \"\(key.prefix(64))\" is not a fully qualified domain name" }
            total += key.utf8.count + value.count
        }
        if total > maxTotalSize { return "annotations total \(total) bytes; at most \(maxTotalSize) are allowed" }
        return nil
    }

    static func isFullyQualifiedDomainName(_ name: String) -> Bool {
        var name = Substring(name)
        if name.hasSuffix(".") { name = name.dropLast() }
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        guard labels.count >= 2 else { return false }
        for label in labels {
            let bytes = Array(label.utf8)
            guard (1...63).contains(bytes.count) else { return false }
            for (i, c) in bytes.enumerated() {
                let alnum = (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9"))
                if i == 0 || i == bytes.count - 1 {
                    guard alnum else { return false }
                } else {
                    guard alnum || c == UInt8(ascii: "-") else { return false }
                }
            }
        }
        return true
    }
}

/// The limits kube-apiserver enforces on KMS v2 values (`ValidateKeyID`, `validateEncryptedDEKSource`,
/// `validateAnnotations` in the apiserver's kmsv2 envelope code). The plugin checks what it receives and returns
/// against them, and the audit checks stored envelopes against them.
public enum KMSv2Limits {
    public static let maxKeyIDBytes = 1024
    public static let maxCiphertextBytes = 1024
    public static let maxAnnotationBytes = 32 * 1024

    /// Why a set of annotations would be rejected, or nil: every key a fully qualified domain name, keys plus values
    /// at most 32 KiB.
    public static func annotationProblem(_ annotations: [String: some Collection<UInt8>]) -> String? {
        var total = 0
        for (key, value) in annotations {
            guard isFullyQualifiedDomainName(key) else {
                return "annotation key \"\(key.prefix(64))\" is not a fully qualified domain name"
            }
            total += key.utf8.count + value.count
        }
        if total > maxAnnotationBytes { return "annotations total \(total) bytes; at most \(maxAnnotationBytes) are allowed" }
        return nil
    }

    /// apimachinery's `IsFullyQualifiedDomainName`: a lowercase RFC 1123 subdomain of at most 253 characters with
    /// at least two labels and an optional trailing dot.
    public static func isFullyQualifiedDomainName(_ name: String) -> Bool {
        var name = Substring(name)
        if name.hasSuffix(".") { name = name.dropLast() }
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        guard labels.count >= 2 else { return false }
        for label in labels {
            let bytes = Array(label.utf8)
            guard let first = bytes.first, let last = bytes.last, bytes.count <= 63 else { return false }
            func alnum(_ c: UInt8) -> Bool { (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) }
            guard alnum(first), alnum(last), bytes.allSatisfy({ alnum($0) || $0 == UInt8(ascii: "-") }) else { return false }
        }
        return true
    }
}

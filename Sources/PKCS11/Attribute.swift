import CPKCS11

/// One PKCS#11 attribute of a template, with its value owned by Swift.
public enum Attribute: Sendable {
    case bool(CK_ATTRIBUTE_TYPE, Bool)
    case ulong(CK_ATTRIBUTE_TYPE, CK_ULONG)
    case bytes(CK_ATTRIBUTE_TYPE, [UInt8])

    public static func string(_ type: CK_ATTRIBUTE_TYPE, _ value: String) -> Attribute {
        .bytes(type, Array(value.utf8))
    }

    var type: CK_ATTRIBUTE_TYPE {
        switch self {
        case .bool(let t, _), .ulong(let t, _), .bytes(let t, _): return t
        }
    }
}

/// Builds a `CK_ATTRIBUTE` array whose value pointers stay valid for the duration of `body`.
func withTemplate<T, E: Error>(
    _ attributes: [Attribute],
    _ body: (UnsafeMutablePointer<CK_ATTRIBUTE>?, CK_ULONG) throws(E) -> T
) throws(E) -> T {
    var storage: [UnsafeMutableRawPointer] = []
    storage.reserveCapacity(attributes.count)
    defer { storage.forEach { $0.deallocate() } }
    var template: [CK_ATTRIBUTE] = []
    template.reserveCapacity(attributes.count)
    for attribute in attributes {
        let bytes: [UInt8]
        switch attribute {
        case .bool(_, let value): bytes = [value ? UInt8(CK_TRUE) : UInt8(CK_FALSE)]
        case .ulong(_, let value): bytes = withUnsafeBytes(of: value) { Array($0) }
        case .bytes(_, let value): bytes = value
        }
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 8)
        bytes.withUnsafeBytes { raw.copyMemory(from: $0.baseAddress ?? UnsafeRawPointer(raw), byteCount: bytes.count) }
        storage.append(raw)
        template.append(CK_ATTRIBUTE(type: attribute.type, pValue: raw, ulValueLen: CK_ULONG(bytes.count)))
    }
    return try template.withUnsafeMutableBufferPointer { (buffer) throws(E) -> T in
        try body(buffer.baseAddress, CK_ULONG(buffer.count))
    }
}

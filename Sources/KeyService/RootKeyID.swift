/// The identity of a root key: the key's `CKA_ID` (16 random bytes chosen when the key is generated).
///
/// The KMS `key_id` is derived from `CKA_ID` alone, so it is stable across restarts, never reused (128 random bits),
/// and stays the same if the key is replicated or backed up into another token (the ID travels with the key).
public struct RootKeyID: Hashable, Sendable, CustomStringConvertible, Comparable {
    public static let byteCount = 16
    public static let prefix = "p11kms-"

    public let bytes: [UInt8]
    /// The KMS `key_id`, made once (every Encrypt and Decrypt names its key).
    public let keyID: String

    public init?(bytes: [UInt8]) {
        guard bytes.count == RootKeyID.byteCount else { return nil }
        self.bytes = bytes
        keyID = RootKeyID.format(bytes)
    }

    /// Parses a `key_id` string (`p11kms-` followed by 32 lowercase hex digits).
    public init?(keyID: String) {
        guard keyID.hasPrefix(RootKeyID.prefix) else { return nil }
        let hex = Array(keyID.utf8.dropFirst(RootKeyID.prefix.utf8.count))
        guard hex.count == RootKeyID.byteCount * 2 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(RootKeyID.byteCount)
        var i = 0
        while i < hex.count {
            guard let hi = RootKeyID.nibble(hex[i]), let lo = RootKeyID.nibble(hex[i + 1]) else { return nil }
            bytes.append(hi << 4 | lo)
            i += 2
        }
        self.bytes = bytes
        self.keyID = keyID
    }

    /// A fresh random identity.
    public static func random() -> RootKeyID {
        RootKeyID(bytes: SecureRandom.bytes(RootKeyID.byteCount))!
    }

    public static func == (lhs: RootKeyID, rhs: RootKeyID) -> Bool { lhs.bytes == rhs.bytes }

    public func hash(into hasher: inout Hasher) { hasher.combine(bytes) }

    /// `p11kms-` and the 32 lowercase hex digits of `bytes`.
    private static func format(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = Array(RootKeyID.prefix.utf8)
        out.reserveCapacity(out.count + bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public var description: String { keyID }

    public static func < (lhs: RootKeyID, rhs: RootKeyID) -> Bool { lhs.bytes.lexicographicallyPrecedes(rhs.bytes) }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        default: return nil
        }
    }
}

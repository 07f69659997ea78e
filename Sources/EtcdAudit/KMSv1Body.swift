/// The body of a KMS v1 value after `k8s:enc:kms:v1:<provider>:` (PROTOCOL.md section 3): a big-endian uint16
/// length, the encrypted DEK the plugin returned from its v1 Encrypt, then the DEK-encrypted data (GCM
/// nonce12‖ciphertext‖tag16, or legacy CBC IV16‖ciphertext). p11kms's encrypted DEK is its own envelope
/// (KeyService's `Envelope`: `P11K`, version 1, the 16-byte CKA_ID, IV, ciphertext and tag), which names the root key.
///
/// Pure: a function of the bytes, no I/O.
public struct KMSv1Body: Sendable, Hashable {
    /// The root key's key_id (`p11kms-` + 32 hex digits); empty when the body does not say (see `problem`).
    public var keyID: String
    /// Why the key cannot be told; empty when `keyID` is set.
    public var problem: String

    public init(keyID: String, problem: String = "") {
        self.keyID = keyID
        self.problem = problem
    }

    static let magic: [UInt8] = Array("P11K".utf8)
    static let formatVersion: UInt8 = 1
    static let idLength = 16
    /// magic, version, id length, id, IV 12, at least one byte, tag 16.
    static let minimumEnvelope = 4 + 2 + idLength + 12 + 1 + 16
    /// The smallest DEK-encrypted part: GCM nonce12 + tag16 (an empty plaintext), CBC IV16 + one block.
    static let minimumData = 12 + 16

    /// True when `body` has the v1 layout: a non-zero length that fits, followed by enough data bytes.
    static func isWellFormed(_ body: UnsafeBufferPointer<UInt8>) -> Bool {
        guard body.count >= 2 else { return false }
        let length = Int(body[0]) << 8 | Int(body[1])
        return length > 0 && body.count >= 2 + length + minimumData
    }

    /// Parses a v1 body; never fails, but says why the key_id cannot be told.
    public static func parse(_ body: UnsafeBufferPointer<UInt8>) -> KMSv1Body {
        guard body.count >= 2 else { return KMSv1Body(keyID: "", problem: "KMS v1 body is truncated") }
        let length = Int(body[0]) << 8 | Int(body[1])
        guard length > 0 else { return KMSv1Body(keyID: "", problem: "KMS v1 encrypted DEK is empty") }
        guard body.count >= 2 + length else {
            return KMSv1Body(keyID: "", problem: "KMS v1 encrypted DEK length \(length) exceeds the value")
        }
        guard body.count >= 2 + length + minimumData else {
            return KMSv1Body(keyID: "", problem: "KMS v1 encrypted data is too short")
        }
        let dek = UnsafeBufferPointer(rebasing: body[2..<(2 + length)])
        guard dek.starts(with: magic) else {
            return KMSv1Body(keyID: "", problem: "KMS v1 encrypted DEK is not a p11kms envelope")
        }
        guard dek.count >= minimumEnvelope else { return KMSv1Body(keyID: "", problem: "p11kms envelope is truncated") }
        guard dek[4] == formatVersion else {
            return KMSv1Body(keyID: "", problem: "p11kms envelope has unsupported format version \(dek[4])")
        }
        guard Int(dek[5]) == idLength else { return KMSv1Body(keyID: "", problem: "p11kms envelope has a malformed key identity") }
        return KMSv1Body(keyID: keyID(UnsafeBufferPointer(rebasing: dek[6..<(6 + idLength)])))
    }

    /// `p11kms-` followed by the lowercase hex of the CKA_ID (KeyService's `RootKeyID.keyID`).
    static func keyID(_ id: UnsafeBufferPointer<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = Array("p11kms-".utf8)
        for byte in id {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// The ciphertext layout p11kms returns from Encrypt (KMS v2 and v1 alike). Self-describing and versioned:
///
/// ```
/// offset  size  field
/// 0       4     magic "P11K"
/// 4       1     format version (1)
/// 5       1     L = length of the root key's CKA_ID (16)
/// 6       L     the root key's CKA_ID
/// 6+L     12    AES-GCM IV, fresh from the CSPRNG for every Encrypt
/// 18+L    n+16  AES-256-GCM ciphertext of the plaintext, then the 16-byte tag
/// ```
/// The header (bytes 0..<6+L) is the GCM additional authenticated data, so the key identity and format version
/// cannot be altered without the token rejecting the ciphertext. KMS v1 has no key_id field; the embedded identity
/// lets v1 ciphertexts name their root key themselves.
public struct Envelope: Sendable, Equatable {
    public static let magic: [UInt8] = Array("P11K".utf8)
    public static let formatVersion: UInt8 = 1
    public static let ivLength = 12
    public static let tagLength = 16
    public static var headerLength: Int { magic.count + 2 + RootKeyID.byteCount }
    /// Bytes added to the plaintext.
    public static var overhead: Int { headerLength + ivLength + tagLength }

    public let keyID: RootKeyID
    public let iv: [UInt8]
    /// Ciphertext followed by the tag.
    public let sealed: [UInt8]

    public init(keyID: RootKeyID, iv: [UInt8], sealed: [UInt8]) {
        self.keyID = keyID
        self.iv = iv
        self.sealed = sealed
    }

    /// The header, which is also the AAD.
    public static func header(for keyID: RootKeyID) -> [UInt8] {
        var out = magic
        out.reserveCapacity(headerLength)
        out.append(formatVersion)
        out.append(UInt8(keyID.bytes.count))
        out.append(contentsOf: keyID.bytes)
        return out
    }

    public var header: [UInt8] { Envelope.header(for: keyID) }

    public func serialized() -> [UInt8] {
        var out = header
        out.reserveCapacity(Envelope.headerLength + iv.count + sealed.count)
        out.append(contentsOf: iv)
        out.append(contentsOf: sealed)
        return out
    }

    /// Parses a ciphertext. Errors say what is wrong with the layout, never anything about its content.
    public init(parsing bytes: [UInt8]) throws(KMSError) {
        guard !bytes.isEmpty else { throw .invalid("ciphertext is empty") }
        guard bytes.count >= Envelope.magic.count, Array(bytes[0..<Envelope.magic.count]) == Envelope.magic else {
            throw .invalid("ciphertext was not produced by p11kms (bad magic)")
        }
        guard bytes.count >= Envelope.magic.count + 2 else { throw .invalid("ciphertext is truncated") }
        let version = bytes[Envelope.magic.count]
        guard version == Envelope.formatVersion else {
            throw .invalid("unsupported ciphertext format version \(version)")
        }
        let idLength = Int(bytes[Envelope.magic.count + 1])
        guard idLength == RootKeyID.byteCount else { throw .invalid("ciphertext has a malformed key identity") }
        let ivStart = Envelope.magic.count + 2 + idLength
        // At least one byte of ciphertext: Encrypt never accepts an empty plaintext.
        guard bytes.count >= ivStart + Envelope.ivLength + Envelope.tagLength + 1 else {
            throw .invalid("ciphertext is truncated")
        }
        self.keyID = RootKeyID(bytes: Array(bytes[(ivStart - idLength)..<ivStart]))!
        self.iv = Array(bytes[ivStart..<(ivStart + Envelope.ivLength)])
        self.sealed = Array(bytes[(ivStart + Envelope.ivLength)...])
    }
}

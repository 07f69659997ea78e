import Foundation
import KMSProto
import SwiftProtobuf

/// Recognises the storage formats of PROTOCOL.md section 3 from a value's bytes. Stateless and cheap: the prefix is
/// matched on raw bytes; KMS v2 envelopes are parsed and validated, KMS v1 bodies are parsed for the p11kms envelope
/// that names the root key. Pure: `format(of:)` is a function of the bytes alone (safe to fuzz).
public struct StorageClassifier: Sendable {
    public let provider: String
    private let ownV2Prefix: [UInt8]
    private let ownV1Prefix: [UInt8]

    static let encPrefix = Array("k8s:enc:".utf8)
    static let kmsV2 = Array("k8s:enc:kms:v2:".utf8)
    static let kmsV1 = Array("k8s:enc:kms:v1:".utf8)
    static let locals: [(StoredFormat.LocalKind, [UInt8])] = [
        (.aescbc, Array("k8s:enc:aescbc:v1:".utf8)),
        (.aesgcm, Array("k8s:enc:aesgcm:v1:".utf8)),
        (.secretbox, Array("k8s:enc:secretbox:v1:".utf8)),
    ]
    static let protobufMagic: [UInt8] = [0x6b, 0x38, 0x73, 0x00]

    public init(provider: String) {
        self.provider = provider
        ownV2Prefix = StorageClassifier.kmsV2 + Array(provider.utf8) + [UInt8(ascii: ":")]
        ownV1Prefix = StorageClassifier.kmsV1 + Array(provider.utf8) + [UInt8(ascii: ":")]
    }

    public func format(of value: Data) -> StoredFormat {
        value.withUnsafeBytes { raw in format(of: raw.bindMemory(to: UInt8.self), value: value) }
    }

    private func format(of bytes: UnsafeBufferPointer<UInt8>, value: Data) -> StoredFormat {
        if bytes.starts(with: Self.protobufMagic) { return .plaintext(.protobuf) }
        guard bytes.starts(with: Self.encPrefix) else { return Self.plainText(bytes) }
        if bytes.starts(with: ownV2Prefix) {
            return ownV2(value.dropFirst(ownV2Prefix.count))
        }
        if bytes.starts(with: Self.kmsV2) {
            guard let (name, end) = Self.name(in: bytes, from: Self.kmsV2.count) else {
                return .unrecognized(reason: "KMS v2 prefix without a provider name")
            }
            switch Self.parseV2(value.dropFirst(end + 1)) {
            case .success(let envelope): return .kmsV2(provider: name, envelope: envelope)
            case .failure(let failure): return .kmsV2Undecodable(provider: name, reason: failure.reason)
            }
        }
        if bytes.starts(with: Self.kmsV1) { return kmsV1(bytes) }
        for (kind, prefix) in Self.locals where bytes.starts(with: prefix) {
            guard let (name, _) = Self.name(in: bytes, from: prefix.count) else {
                return .unrecognized(reason: "\(kind.rawValue) prefix without a key name")
            }
            return .local(kind, keyName: name)
        }
        let shown = bytes.prefix(40).prefix { $0 >= 0x20 && $0 < 0x7f }
        return .unrecognized(reason: "unknown encryption prefix \(String(decoding: shown, as: UTF8.self))")
    }

    /// KMS v1 provider names may contain ':' (only v2 names may not), so the name ends at the ':' after which a
    /// well-formed v1 body follows: the configured name, matched exactly, first; then the shortest such name.
    /// Without a well-formed body anywhere, the value is this provider's when its prefix matches, else the name runs
    /// to the first ':'; the key_id then stays empty and `problem` says why.
    private func kmsV1(_ bytes: UnsafeBufferPointer<UInt8>) -> StoredFormat {
        func body(after colon: Int) -> UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(rebasing: bytes[(colon + 1)...]) }
        let own = bytes.starts(with: ownV1Prefix)
        if own, KMSv1Body.isWellFormed(body(after: ownV1Prefix.count - 1)) {
            return .kmsV1(provider: provider, body: KMSv1Body.parse(body(after: ownV1Prefix.count - 1)))
        }
        let start = Self.kmsV1.count
        var firstColon: Int?
        var i = start
        // A name is printable ASCII: the search ends at the first byte that cannot be part of one.
        while i < bytes.count, bytes[i] > 0x20, bytes[i] < 0x7f {
            if bytes[i] == UInt8(ascii: ":"), i > start {
                if firstColon == nil { firstColon = i }
                if KMSv1Body.isWellFormed(body(after: i)) {
                    return .kmsV1(provider: Self.text(bytes, start, i), body: KMSv1Body.parse(body(after: i)))
                }
            }
            i += 1
        }
        if own { return .kmsV1(provider: provider, body: KMSv1Body.parse(body(after: ownV1Prefix.count - 1))) }
        guard let firstColon else { return .unrecognized(reason: "KMS v1 prefix without a provider name") }
        return .kmsV1(provider: Self.text(bytes, start, firstColon), body: KMSv1Body.parse(body(after: firstColon)))
    }

    private static func text(_ bytes: UnsafeBufferPointer<UInt8>, _ from: Int, _ to: Int) -> String {
        String(decoding: UnsafeBufferPointer(rebasing: bytes[from..<to]), as: UTF8.self)
    }

    private func ownV2(_ body: Data) -> StoredFormat {
        switch Self.parseV2(body) {
        case .success(let envelope): .kmsV2(provider: provider, envelope: envelope)
        case .failure(let failure): .kmsV2Undecodable(provider: provider, reason: failure.reason)
        }
    }

    /// The name between `start` and the next ':' (non-empty), and the index of that ':'.
    private static func name(in bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> (String, Int)? {
        var i = start
        while i < bytes.count, bytes[i] != UInt8(ascii: ":") { i += 1 }
        guard i < bytes.count, i > start else { return nil }
        return (String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self), i)
    }

    private static func plainText(_ bytes: UnsafeBufferPointer<UInt8>) -> StoredFormat {
        let body = bytes.drop { $0 == 0x20 || $0 == 0x0a || $0 == 0x0d || $0 == 0x09 }
        if body.first == UInt8(ascii: "{") { return .plaintext(.json) }
        if body.starts(with: Array("apiVersion:".utf8)) || body.starts(with: Array("kind:".utf8)) {
            return .plaintext(.yaml)
        }
        if bytes.isEmpty { return .unrecognized(reason: "empty value") }
        return .unrecognized(reason: "neither protobuf, JSON nor a known encryption prefix")
    }

    struct ParseFailure: Error { let reason: String }

    /// Parses and validates an `EncryptedObject` as kube-apiserver's `ValidateEncryptedObject` does.
    static func parseV2(_ body: Data) -> Result<KMSv2Envelope, ParseFailure> {
        let object: V2_EncryptedObject
        do {
            object = try V2_EncryptedObject(serializedBytes: body)
        } catch {
            return .failure(ParseFailure(reason: "EncryptedObject does not parse"))
        }
        if let problem = validate(object) { return .failure(ParseFailure(reason: problem)) }
        let type: KMSv2Envelope.SourceType = object.encryptedDeksourceType == .hkdfSha256XnonceAesGcmSeed
            ? .hkdfSHA256XNonceAESGCMSeed : .aesGCMKey
        let dek = WrappedDEK(keyID: object.keyID, ciphertext: object.encryptedDeksource, sourceType: type,
                             annotations: object.annotations)
        return .success(KMSv2Envelope(keyID: object.keyID, dek: dek))
    }

    static func validate(_ object: V2_EncryptedObject) -> String? {
        let minimumData: Int
        switch object.encryptedDeksourceType {
        case .aesGcmKey: minimumData = 12 + 16
        case .hkdfSha256XnonceAesGcmSeed: minimumData = 32 + 12 + 16
        case .UNRECOGNIZED(let value): return "unknown encryptedDEKSourceType \(value)"
        }
        if object.encryptedData.isEmpty { return "encryptedData is empty" }
        if object.encryptedData.count < minimumData { return "encryptedData is too short (\(object.encryptedData.count) bytes)" }
        if object.keyID.isEmpty { return "keyID is empty" }
        if object.keyID.utf8.count > KMSv2Limits.maxKeyIDBytes { return "keyID is longer than 1024 bytes" }
        if object.encryptedDeksource.isEmpty { return "encryptedDEKSource is empty" }
        if object.encryptedDeksource.count > KMSv2Limits.maxCiphertextBytes { return "encryptedDEKSource is longer than 1024 bytes" }
        if let problem = KMSv2Limits.annotationProblem(object.annotations) { return problem }
        return nil
    }
}

import EtcdProto
import Foundation
import SwiftProtobuf

/// Finds private keys in plaintext (unencrypted) stored values: PEM `PRIVATE KEY` blocks of any kind (PKCS#8,
/// `RSA`, `EC`, `DSA`, `OPENSSH`, `ENCRYPTED`, also when base64-encoded once more) and Hyperledger Fabric MSP keystore
/// entries (`*_sk`, `keystore`, `key.pem` data keys). Returns the names of the data keys that hold one, never their
/// content. Reads only the bytes it is given (nothing is decrypted). Pure: safe to fuzz.
public enum PrivateKeyScan {
    /// What a finding is, for the report's detail.
    public enum Kind: String, Sendable { case pem = "PEM private key", keystore = "MSP keystore entry" }

    public struct Finding: Sendable, Equatable {
        /// The Secret's data key (file name), or empty when the whole value was scanned (other resources).
        public var dataKey: String
        public var kind: Kind
    }

    /// The findings in a plaintext Secret (`k8s\0` protobuf, JSON or YAML), data keys in name order. A value
    /// that does not parse as a Secret is scanned whole for PEM blocks.
    public static func secret(_ value: Data, encoding: StoredFormat.PlainEncoding) -> [Finding] {
        var entries: [String: Data]?
        switch encoding {
        case .protobuf: entries = protobufData(value)
        case .json: entries = jsonData(value)
        case .yaml: entries = nil
        }
        guard let entries else { return whole(value) }
        var findings: [Finding] = []
        for name in entries.keys.sorted() {
            let content = entries[name]!
            if containsPEMPrivateKey(content) {
                findings.append(Finding(dataKey: name, kind: .pem))
            } else if !content.isEmpty, isKeystoreName(name) {
                findings.append(Finding(dataKey: name, kind: .keystore))
            }
        }
        return findings
    }

    /// A PEM private key anywhere in the value (ConfigMaps and other resources: their data is stored as text).
    public static func whole(_ value: Data) -> [Finding] {
        containsPEMPrivateKey(value) ? [Finding(dataKey: "", kind: .pem)] : []
    }

    /// Fabric MSP keystore file names: `<ski>_sk` (and `priv_sk`), `keystore`, `key.pem`.
    public static func isKeystoreName(_ name: String) -> Bool {
        let lower = name.lowercased()
        return lower.hasSuffix("_sk") || lower == "keystore" || lower == "key.pem"
    }

    static let begin = Array("-----BEGIN ".utf8)
    static let privateKeyEnd = Array("PRIVATE KEY-----".utf8)
    /// base64 of "-----BEGIN " at a 3-byte boundary; the following characters are decoded and checked.
    static let base64Begin = Array("LS0tLS1CRUdJTi".utf8)

    /// True when `bytes` holds a `-----BEGIN <words >PRIVATE KEY-----` line, directly or base64-encoded.
    public static func containsPEMPrivateKey(_ data: Data) -> Bool {
        data.withUnsafeBytes { raw in
            let bytes = raw.bindMemory(to: UInt8.self)
            return hasPEMHeader(bytes) || hasBase64PEMHeader(bytes)
        }
    }

    static func hasPEMHeader(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var from = 0
        while let at = find(begin, in: bytes, from: from) {
            // Label: capitals, digits and spaces up to "-----"; a private key's ends in "PRIVATE KEY".
            var i = at + begin.count
            while i < bytes.count, i - at < 80 {
                let c = bytes[i]
                guard (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c == 0x20 else { break }
                i += 1
            }
            let labelEnd = i
            let suffixStart = labelEnd - (privateKeyEnd.count - 5)
            if suffixStart >= at + begin.count, labelEnd + 5 <= bytes.count,
               UnsafeBufferPointer(rebasing: bytes[suffixStart..<(labelEnd + 5)]).elementsEqual(privateKeyEnd) {
                return true
            }
            from = at + 1
        }
        return false
    }

    static func hasBase64PEMHeader(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var from = 0
        while let at = find(base64Begin, in: bytes, from: from) {
            var end = at
            while end < bytes.count, end - at < 96, isBase64(bytes[end]) { end += 1 }
            let usable = (end - at) / 4 * 4
            if usable > 0, let decoded = Data(base64Encoded: Data(UnsafeBufferPointer(rebasing: bytes[at..<(at + usable)]))) {
                let found = decoded.withUnsafeBytes { hasPEMHeader($0.bindMemory(to: UInt8.self)) }
                if found { return true }
            }
            from = at + 1
        }
        return false
    }

    static func isBase64(_ c: UInt8) -> Bool {
        (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c == 0x2b || c == 0x2f || c == 0x3d
    }

    static func find(_ needle: [UInt8], in bytes: UnsafeBufferPointer<UInt8>, from: Int) -> Int? {
        guard let first = needle.first, bytes.count >= needle.count else { return nil }
        var i = from
        let last = bytes.count - needle.count
        while i <= last {
            if bytes[i] == first {
                var j = 1
                while j < needle.count, bytes[i + j] == needle[j] { j += 1 }
                if j == needle.count { return i }
            }
            i += 1
        }
        return nil
    }

    /// `k8s\0` + runtime.Unknown whose raw is a v1.Secret: data and stringData.
    static func protobufData(_ value: Data) -> [String: Data]? {
        guard value.count > 4 else { return nil }
        guard let unknown = try? K8s_Unknown(serializedBytes: value.dropFirst(4)),
              let secret = try? K8s_Secret(serializedBytes: unknown.raw) else { return nil }
        var entries = secret.data
        for (name, text) in secret.stringData where entries[name] == nil { entries[name] = Data(text.utf8) }
        return entries
    }

    /// `{"data": {name: base64}, "stringData": {name: text}}`.
    static func jsonData(_ value: Data) -> [String: Data]? {
        guard let object = try? JSONSerialization.jsonObject(with: value) as? [String: Any] else { return nil }
        var entries: [String: Data] = [:]
        for (name, encoded) in object["data"] as? [String: Any] ?? [:] {
            guard let text = encoded as? String else { continue }
            entries[name] = Data(base64Encoded: text) ?? Data(text.utf8)
        }
        for (name, text) in object["stringData"] as? [String: Any] ?? [:] where entries[name] == nil {
            if let text = text as? String { entries[name] = Data(text.utf8) }
        }
        return entries
    }
}

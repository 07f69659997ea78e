import Foundation
import GRPCTransport
import KMSProto
import KeyService
import Logging

/// KMS v1 (`/v1beta1.KeyManagementService/*`) on the same socket, for clusters before 1.29. v1 has no key_id field:
/// the ciphertext names its root key itself, so v1 ciphertexts wrapped under older keys still decrypt after rotation.
public struct KMSv1Service: Sendable {
    public static let version = "v1beta1"
    public static let runtimeName = "p11kms"
    /// v1 has no 1 KiB ciphertext limit; kube-apiserver sends 32-byte DEKs.
    public static let maxCiphertext = 64 * 1024

    public let service: EnvelopeService
    public let runtimeVersion: String
    let pipeline: UnaryPipeline

    init(service: EnvelopeService, runtimeVersion: String, pipeline: UnaryPipeline) {
        self.service = service
        self.runtimeVersion = runtimeVersion
        self.pipeline = pipeline
    }

    /// Version answers without the token and runs on the server's own lane.
    public static let inlineMethods: Set<String> = [KMSv1Method.version]

    private static func checkVersion(_ version: String) throws(KMSError) {
        guard version == KMSv1Service.version else {
            throw KMSError.invalid("unsupported KMS API version \"\(version.prefix(32))\"; expected \"v1beta1\"")
        }
    }

    var handlers: [String: UnaryHandler] {
        let extra: Logger.Metadata = ["api": "v1beta1"]
        return [
            KMSv1Method.version: pipeline.unary("Version", V1beta1_VersionRequest.self, usesToken: false, logExtra: extra) {
                (request, _) throws(KMSError) in
                try Self.checkVersion(request.version)
                var response = V1beta1_VersionResponse()
                response.version = KMSv1Service.version
                response.runtimeName = KMSv1Service.runtimeName
                response.runtimeVersion = runtimeVersion
                return .init(response: response, keyID: nil)
            },
            KMSv1Method.encrypt: pipeline.unary("Encrypt", V1beta1_EncryptRequest.self, usesToken: true, logExtra: extra) {
                (request, deadline) throws(KMSError) in
                try Self.checkVersion(request.version)
                var plaintext = Array(request.plain)
                defer { Zeroize.bytes(&plaintext) }
                let (ciphertext, key) = try service.encrypt(plaintext, maxCiphertext: KMSv1Service.maxCiphertext,
                                                            deadline: deadline)
                var response = V1beta1_EncryptResponse()
                response.cipher = Data(ciphertext)
                return .init(response: response, keyID: key.keyID)
            },
            KMSv1Method.decrypt: pipeline.unary("Decrypt", V1beta1_DecryptRequest.self, usesToken: true, logExtra: extra) {
                (request, deadline) throws(KMSError) in
                try Self.checkVersion(request.version)
                var (plaintext, key) = try service.decrypt(Array(request.cipher), expectedKeyID: nil, deadline: deadline)
                defer { Zeroize.bytes(&plaintext) }
                var response = V1beta1_DecryptResponse()
                response.plain = Data(plaintext)
                return .init(response: response, keyID: key.keyID)
            },
        ]
    }
}

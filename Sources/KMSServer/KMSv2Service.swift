import Foundation
import GRPCTransport
import KMSProto
import KeyService
import Logging

/// KMS v2 (`/v2.KeyManagementService/*`): converts protobuf to and from the key service; everything else is the
/// pipeline's.
public struct KMSv2Service: Sendable {
    /// kube-apiserver 1.27–1.28 accept only "v2beta1"; 1.29+ accept both and "v2" is recommended.
    public enum StatusVersion: String, Sendable, CaseIterable {
        case v2
        case v2beta1
    }

    public let service: EnvelopeService
    public let health: HealthMonitor
    public let statusVersion: StatusVersion
    let pipeline: UnaryPipeline

    init(service: EnvelopeService, statusVersion: StatusVersion, pipeline: UnaryPipeline) {
        self.service = service
        self.health = pipeline.health
        self.statusVersion = statusVersion
        self.pipeline = pipeline
    }

    /// Status answers from the health state (never the token) and runs on the server's own lane.
    public static let inlineMethods: Set<String> = [KMSv2Method.status]

    var handlers: [String: UnaryHandler] {
        [
            KMSv2Method.status: pipeline.unary("Status", V2_StatusRequest.self, usesToken: false) { _, _ in
                let current = health.health
                var response = V2_StatusResponse()
                response.version = statusVersion.rawValue
                response.healthz = current.healthy ? "ok" : current.reason
                response.keyID = current.currentKeyID ?? ""
                return .init(response: response, keyID: nil)
            },
            KMSv2Method.encrypt: pipeline.unary(
                "Encrypt", V2_EncryptRequest.self, usesToken: true, context: { ["uid": "\(LogSafe.requestString($0.uid))"] }
            ) { (request, deadline) throws(KMSError) in
                // The data key: this copy is ours to zero (see Zeroize for what it cannot reach).
                var plaintext = Array(request.plaintext)
                defer { Zeroize.bytes(&plaintext) }
                let (ciphertext, key) = try service.encrypt(plaintext, deadline: deadline)
                var response = V2_EncryptResponse()
                response.ciphertext = Data(ciphertext)
                response.keyID = key.keyID
                return .init(response: response, keyID: key.keyID)
            },
            KMSv2Method.decrypt: pipeline.unary(
                "Decrypt", V2_DecryptRequest.self, usesToken: true,
                context: { ["uid": "\(LogSafe.requestString($0.uid))", "key_id": "\(LogSafe.requestString($0.keyID))"] }
            ) { (request, deadline) throws(KMSError) in
                let annotations = request.annotations
                if let problem = KMSv2Limits.annotationProblem(annotations) { throw KMSError.invalid(problem) }
                // p11kms never returns annotations, so any annotation on a Decrypt is not one of ours.
                if let key = annotations.keys.sorted().first {
                    throw KMSError.invalid("unexpected annotation \"\(key.prefix(64))\": p11kms ciphertexts carry none")
                }
                var (plaintext, key) = try service.decrypt(Array(request.ciphertext), expectedKeyID: request.keyID,
                                                           deadline: deadline)
                defer { Zeroize.bytes(&plaintext) }
                var response = V2_DecryptResponse()
                response.plaintext = Data(plaintext)
                return .init(response: response, keyID: key.keyID)
            },
        ]
    }
}

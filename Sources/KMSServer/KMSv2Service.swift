import Foundation
import GRPCTransport
import KMSProto
import KeyService
import Logging
import SwiftProtobuf

/// KMS v2 (`/v2.KeyManagementService/*`): converts protobuf to and from the key service and maps its errors.
public struct KMSv2Service: Sendable {
    /// kube-apiserver 1.27–1.28 accept only "v2beta1"; 1.29+ accept both and "v2" is recommended.
    public enum StatusVersion: String, Sendable, CaseIterable {
        case v2
        case v2beta1
    }

    public let service: EnvelopeService
    public let health: HealthMonitor
    public let statusVersion: StatusVersion
    public let logger: Logger
    public let metrics: KMSMetrics

    public init(service: EnvelopeService, health: HealthMonitor, statusVersion: StatusVersion = .v2, logger: Logger, metrics: KMSMetrics) {
        self.service = service
        self.health = health
        self.statusVersion = statusVersion
        self.logger = logger
        self.metrics = metrics
    }

    public var handlers: [String: UnaryHandler] {
        [
            KMSv2Method.status: { request, _ in try self.status(request) },
            KMSv2Method.encrypt: { request, _ in try self.encrypt(request) },
            KMSv2Method.decrypt: { request, _ in try self.decrypt(request) },
        ]
    }

    func status(_ bytes: [UInt8]) throws(GRPCStatus) -> [UInt8] {
        let started = ContinuousClock.now
        guard (try? V2_StatusRequest(serializedBytes: bytes)) != nil else {
            metrics.record(method: "Status", outcome: .invalidInput, since: started)
            throw GRPCStatus(.invalidArgument, "malformed StatusRequest")
        }
        let current = health.health
        var response = V2_StatusResponse()
        response.version = statusVersion.rawValue
        response.healthz = current.healthy ? "ok" : current.reason
        response.keyID = current.currentKeyID ?? ""
        metrics.record(method: "Status", outcome: .success, since: started)
        return serialize(response)
    }

    func encrypt(_ bytes: [UInt8]) throws(GRPCStatus) -> [UInt8] {
        let started = ContinuousClock.now
        let request: V2_EncryptRequest
        do {
            request = try V2_EncryptRequest(serializedBytes: bytes)
        } catch {
            metrics.record(method: "Encrypt", outcome: .invalidInput, since: started)
            throw GRPCStatus(.invalidArgument, "malformed EncryptRequest")
        }
        do throws(KMSError) {
            let (ciphertext, key) = try service.encrypt(Array(request.plaintext))
            var response = V2_EncryptResponse()
            response.ciphertext = Data(ciphertext)
            response.keyID = key.keyID
            metrics.record(method: "Encrypt", outcome: .success, since: started, keyID: key.keyID)
            logger.debug("encrypt", metadata: ["uid": "\(request.uid)", "key_id": "\(key.keyID)"])
            return serialize(response)
        } catch {
            throw fail("Encrypt", error, uid: request.uid, since: started)
        }
    }

    func decrypt(_ bytes: [UInt8]) throws(GRPCStatus) -> [UInt8] {
        let started = ContinuousClock.now
        let request: V2_DecryptRequest
        do {
            request = try V2_DecryptRequest(serializedBytes: bytes)
        } catch {
            metrics.record(method: "Decrypt", outcome: .invalidInput, since: started)
            throw GRPCStatus(.invalidArgument, "malformed DecryptRequest")
        }
        do throws(KMSError) {
            let annotations = request.annotations
            if let problem = KMSv2Limits.annotationProblem(annotations) { throw KMSError.invalid(problem) }
            // p11kms never returns annotations, so any annotation on a Decrypt is not one of ours.
            if let key = annotations.keys.sorted().first {
                throw KMSError.invalid("unexpected annotation \"\(key.prefix(64))\": p11kms ciphertexts carry none")
            }
            let (plaintext, key) = try service.decrypt(Array(request.ciphertext), expectedKeyID: request.keyID)
            var response = V2_DecryptResponse()
            response.plaintext = Data(plaintext)
            metrics.record(method: "Decrypt", outcome: .success, since: started, keyID: key.keyID)
            logger.debug("decrypt", metadata: ["uid": "\(request.uid)", "key_id": "\(key.keyID)"])
            return serialize(response)
        } catch {
            throw fail("Decrypt", error, uid: request.uid, since: started, keyID: request.keyID)
        }
    }

    private func fail(_ method: String, _ error: KMSError, uid: String, since started: ContinuousClock.Instant, keyID: String? = nil) -> GRPCStatus {
        var metadata: Logger.Metadata = ["uid": "\(uid)"]
        if let keyID { metadata["key_id"] = "\(keyID.prefix(1024))" }
        return reportFailure(method, error, since: started, metadata: metadata, metrics: metrics, health: health, logger: logger)
    }
}

/// Serialises a response. Encoding these plain messages cannot fail (no required fields, no Any); an empty
/// reply would in any case be rejected by the caller's checks rather than misread.
func serialize(_ message: some SwiftProtobuf.Message) -> [UInt8] {
    (try? message.serializedBytes()) ?? []
}

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
    public let health: HealthMonitor
    public let runtimeVersion: String
    public let logger: Logger
    public let metrics: KMSMetrics

    public init(service: EnvelopeService, health: HealthMonitor, runtimeVersion: String, logger: Logger, metrics: KMSMetrics) {
        self.service = service
        self.health = health
        self.runtimeVersion = runtimeVersion
        self.logger = logger
        self.metrics = metrics
    }

    public var handlers: [String: UnaryHandler] {
        [
            KMSv1Method.version: { request, _ in try self.version(request) },
            KMSv1Method.encrypt: { request, _ in try self.encrypt(request) },
            KMSv1Method.decrypt: { request, _ in try self.decrypt(request) },
        ]
    }

    private func checkVersion(_ version: String) throws(GRPCStatus) {
        guard version == KMSv1Service.version else {
            throw GRPCStatus(.invalidArgument, "unsupported KMS API version \"\(version.prefix(32))\"; expected \"v1beta1\"")
        }
    }

    func version(_ bytes: [UInt8]) throws(GRPCStatus) -> [UInt8] {
        let started = ContinuousClock.now
        guard let request = try? V1beta1_VersionRequest(serializedBytes: bytes) else {
            throw GRPCStatus(.invalidArgument, "malformed VersionRequest")
        }
        try checkVersion(request.version)
        var response = V1beta1_VersionResponse()
        response.version = KMSv1Service.version
        response.runtimeName = KMSv1Service.runtimeName
        response.runtimeVersion = runtimeVersion
        metrics.record(method: "Version", outcome: .success, since: started)
        return serialize(response)
    }

    func encrypt(_ bytes: [UInt8]) throws(GRPCStatus) -> [UInt8] {
        let started = ContinuousClock.now
        guard let request = try? V1beta1_EncryptRequest(serializedBytes: bytes) else {
            metrics.record(method: "Encrypt", outcome: .invalidInput, since: started)
            throw GRPCStatus(.invalidArgument, "malformed EncryptRequest")
        }
        try checkVersion(request.version)
        do throws(KMSError) {
            let (ciphertext, key) = try service.encrypt(Array(request.plain), maxCiphertext: KMSv1Service.maxCiphertext)
            var response = V1beta1_EncryptResponse()
            response.cipher = Data(ciphertext)
            metrics.record(method: "Encrypt", outcome: .success, since: started, keyID: key.keyID)
            logger.debug("v1 encrypt", metadata: ["key_id": "\(key.keyID)"])
            return serialize(response)
        } catch {
            throw fail("Encrypt", error, since: started)
        }
    }

    func decrypt(_ bytes: [UInt8]) throws(GRPCStatus) -> [UInt8] {
        let started = ContinuousClock.now
        guard let request = try? V1beta1_DecryptRequest(serializedBytes: bytes) else {
            metrics.record(method: "Decrypt", outcome: .invalidInput, since: started)
            throw GRPCStatus(.invalidArgument, "malformed DecryptRequest")
        }
        try checkVersion(request.version)
        do throws(KMSError) {
            let (plaintext, key) = try service.decrypt(Array(request.cipher), expectedKeyID: nil)
            var response = V1beta1_DecryptResponse()
            response.plain = Data(plaintext)
            metrics.record(method: "Decrypt", outcome: .success, since: started, keyID: key.keyID)
            logger.debug("v1 decrypt", metadata: ["key_id": "\(key.keyID)"])
            return serialize(response)
        } catch {
            throw fail("Decrypt", error, since: started)
        }
    }

    private func fail(_ method: String, _ error: KMSError, since started: ContinuousClock.Instant) -> GRPCStatus {
        reportFailure(method, error, since: started, metadata: ["api": "v1beta1"], metrics: metrics, health: health, logger: logger)
    }
}

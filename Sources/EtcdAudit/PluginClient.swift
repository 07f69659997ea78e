import Foundation
import GRPCTransport
import KMSProto
import SwiftProtobuf

/// What the running plugin says about itself (KMS v2 Status).
public struct PluginStatus: Sendable, Equatable {
    public var version: String
    public var healthz: String
    public var keyID: String
}

/// A KMS v2 client for the plugin's unix socket, as kube-apiserver talks to it: the audit asks Status for the
/// current key_id and Decrypt to learn whether a key is still held. No PIN is involved. Blocking.
public final class PluginClient: Sendable {
    public let endpoint: String
    public let timeout: Duration
    private let client: GRPCClient

    /// `endpoint` is `unix:///path` (as in the EncryptionConfiguration), `unix:/path` or an absolute path.
    public init(endpoint: String, timeout: Duration = .seconds(10)) throws(AuditError) {
        var path = Substring(endpoint)
        if path.hasPrefix("unix://") {
            path = path.dropFirst("unix://".count)
        } else if path.hasPrefix("unix:") {
            path = path.dropFirst("unix:".count)
        }
        if path.hasPrefix("/@") { path = path.dropFirst() }
        guard (path.hasPrefix("/") || path.hasPrefix("@")) && path.count > 1 else {
            throw AuditError(.configuration, "--listen \(endpoint): expected unix:///path/to/socket")
        }
        // "@name" (written unix:///@name) is an abstract socket, as the plugin's --listen accepts.
        let target = path.hasPrefix("@") ? "unix-abstract:" + path.dropFirst() : "unix:" + path
        self.endpoint = endpoint
        self.timeout = timeout
        do {
            client = try GRPCClient(configuration: GRPCClientConfiguration(target: target))
        } catch {
            throw AuditError(.configuration, "--listen \(endpoint): \(error.message)", status: error)
        }
    }

    deinit { client.close() }

    public func status() throws(AuditError) -> PluginStatus {
        let response = try call(KMSv2Method.status, V2_StatusRequest(), as: V2_StatusResponse.self)
        return PluginStatus(version: response.version, healthz: response.healthz, keyID: response.keyID)
    }

    /// Asks the plugin to unwrap `dek`, as the apiserver would on a read. The plaintext is never decoded or kept:
    /// the response buffer is overwritten before it is released. Throws the plugin's gRPC status.
    public func unwrap(_ dek: WrappedDEK) throws(GRPCStatus) {
        var request = V2_DecryptRequest()
        request.ciphertext = dek.ciphertext
        request.keyID = dek.keyID
        request.annotations = dek.annotations
        request.uid = UUID().uuidString.lowercased()
        let bytes: [UInt8]
        do { bytes = try request.serializedBytes() } catch { throw GRPCStatus(.internal, "cannot encode DecryptRequest") }
        var response = try client.unary(method: KMSv2Method.decrypt, request: bytes, timeout: timeout)
        for i in response.indices { response[i] = 0 }
    }

    /// Wraps `plaintext` (a seed or DEK) with the plugin's current key, as the apiserver does when its key_id
    /// changes. Used by tests and the benchmark to store Secrets exactly as the apiserver would.
    public func wrap(_ plaintext: [UInt8]) throws(AuditError) -> (ciphertext: Data, keyID: String, annotations: [String: Data]) {
        var request = V2_EncryptRequest()
        request.plaintext = Data(plaintext)
        request.uid = UUID().uuidString.lowercased()
        let response = try call(KMSv2Method.encrypt, request, as: V2_EncryptResponse.self)
        return (response.ciphertext, response.keyID, response.annotations)
    }

    private func call<Response: SwiftProtobuf.Message>(_ method: String, _ request: some SwiftProtobuf.Message,
                                                        as: Response.Type) throws(AuditError) -> Response {
        let name = method.split(separator: "/").last.map(String.init) ?? method
        do {
            let response = try client.unary(method: method, request: try request.serializedBytes(), timeout: timeout)
            return try Response(serializedBytes: response)
        } catch let status as GRPCStatus {
            if status.code == .unavailable || status.code == .deadlineExceeded {
                throw AuditError(.pluginUnavailable, "the plugin at \(endpoint) does not answer \(name): \(status)", status: status)
            }
            throw AuditError(.pluginFailed, "the plugin at \(endpoint) failed \(name): \(status)", status: status)
        } catch {
            throw AuditError(.pluginFailed, "the plugin at \(endpoint) sent a \(name) response that does not parse")
        }
    }
}

import EtcdProto
import Foundation
import GRPCTransport
import SwiftProtobuf
import Synchronization

/// The subset of etcd's v3 API the audit (and its tests) need: KV.Range, Put, DeleteRange and Auth.Authenticate,
/// over the project's blocking gRPC client. Calls block the calling thread; use threads of your own.
///
/// Endpoints are tried in order; a call that finds its endpoint unavailable moves on to the next one, except after a
/// failed TLS handshake, which fails the call. A user and password are accepted only when every endpoint is https://;
/// the client then authenticates first and re-authenticates once when etcd says the token expired.
public final class EtcdClient: Sendable {
    public let configuration: EtcdClientConfiguration
    private let endpoints: [EtcdEndpoint]
    private let clients: [GRPCClient]
    private let state = Mutex(State())

    private struct State {
        var preferred = 0
        var token: String?
    }

    public init(configuration: EtcdClientConfiguration) throws(AuditError) {
        guard !configuration.endpoints.isEmpty else { throw AuditError(.configuration, "no etcd endpoint given") }
        if configuration.user == nil, configuration.password != nil {
            throw AuditError(.configuration, "--password needs --user")
        }
        var endpoints: [EtcdEndpoint] = []
        for text in configuration.endpoints {
            endpoints.append(try EtcdEndpoint(parsing: text, tlsByDefault: configuration.usesTLSMaterial))
        }
        if configuration.user != nil, let plain = endpoints.first(where: { !$0.secure }) {
            throw AuditError(.configuration, "etcd endpoint \(plain.display): --user/--password would travel unencrypted; "
                + "use https:// endpoints (with --cacert) for password authentication")
        }
        if !endpoints.contains(where: \.secure), configuration.certificatePEM != nil {
            throw AuditError(.configuration, "--cert and --key need an https:// etcd endpoint")
        }
        var clients: [GRPCClient] = []
        for endpoint in endpoints {
            var grpc = GRPCClientConfiguration(target: endpoint.target, credentials: .insecure)
            if endpoint.secure {
                grpc.credentials = .tls(rootCertificatesPEM: configuration.caCertificatePEM,
                                        certificateChainPEM: configuration.certificatePEM,
                                        privateKeyPEM: configuration.privateKeyPEM)
                grpc.authority = endpoint.host.contains(":") ? "[\(endpoint.host)]" : endpoint.host
            }
            // A page of Secrets can be large (up to 1.5 MiB a Secret): accept what etcd sends.
            grpc.maxReceiveMessageSize = Int(Int32.max)
            do {
                clients.append(try GRPCClient(configuration: grpc))
            } catch {
                clients.forEach { $0.close() }
                throw AuditError(.configuration, "etcd endpoint \(endpoint.display): \(error.message)", status: error)
            }
        }
        self.configuration = configuration
        self.endpoints = endpoints
        self.clients = clients
    }

    deinit { clients.forEach { $0.close() } }

    public func close() { clients.forEach { $0.close() } }

    // MARK: KV

    /// A serializable read at a revision the answering member has not applied yet (after a fail-over to a member
    /// that lags) is retried as a linearizable one, which waits for it.
    public func range(_ request: Etcdserverpb_RangeRequest) throws(AuditError) -> Etcdserverpb_RangeResponse {
        do {
            return try call(EtcdMethod.range, request, as: Etcdserverpb_RangeResponse.self)
        } catch where request.serializable && error.status?.code == .outOfRange && error.message.contains("future revision") {
            var linearizable = request
            linearizable.serializable = false
            return try call(EtcdMethod.range, linearizable, as: Etcdserverpb_RangeResponse.self)
        }
    }

    @discardableResult
    public func put(key: [UInt8], value: [UInt8]) throws(AuditError) -> Etcdserverpb_PutResponse {
        var request = Etcdserverpb_PutRequest()
        request.key = Data(key)
        request.value = Data(value)
        return try call(EtcdMethod.put, request, as: Etcdserverpb_PutResponse.self)
    }

    /// Deletes every key starting with `prefix`; returns how many were deleted.
    @discardableResult
    public func deletePrefix(_ prefix: [UInt8]) throws(AuditError) -> Int64 {
        var request = Etcdserverpb_DeleteRangeRequest()
        request.key = Data(prefix)
        request.rangeEnd = Data(EtcdKeys.prefixEnd(prefix))
        return try call(EtcdMethod.deleteRange, request, as: Etcdserverpb_DeleteRangeResponse.self).deleted
    }

    // MARK: Calls

    private func call<Response: SwiftProtobuf.Message>(_ method: String, _ request: some SwiftProtobuf.Message,
                                                        as: Response.Type) throws(AuditError) -> Response {
        let bytes: [UInt8]
        do {
            bytes = try request.serializedBytes()
        } catch {
            throw AuditError(.etcdFailed, "cannot encode the \(method) request")
        }
        let response = try send(method, bytes, authenticated: true)
        do {
            return try Response(serializedBytes: response)
        } catch {
            throw AuditError(.etcdFailed, "etcd sent a \(method) response that does not parse")
        }
    }

    /// Sends with the auth token (authenticating first when needed), failing over between endpoints.
    func send(_ method: String, _ request: [UInt8], authenticated: Bool) throws(AuditError) -> [UInt8] {
        var reauthenticated = false
        while true {
            var metadata: [(key: String, value: String)] = []
            if authenticated, configuration.user != nil {
                metadata.append((key: "token", value: try token(refresh: false)))
            }
            do {
                return try sendAnyEndpoint(method, request, metadata: metadata)
            } catch let error where authenticated && configuration.user != nil && !reauthenticated
                && error.status?.code == .unauthenticated {
                // Simple tokens expire (300 s by default): authenticate again once.
                reauthenticated = true
                _ = try token(refresh: true)
            }
        }
    }

    private func sendAnyEndpoint(_ method: String, _ request: [UInt8],
                                 metadata: [(key: String, value: String)]) throws(AuditError) -> [UInt8] {
        let first = state.withLock { $0.preferred }
        var failures: [String] = []
        for offset in 0..<clients.count {
            let index = (first + offset) % clients.count
            do {
                let response = try clients[index].unary(method: method, request: request, metadata: metadata,
                                                        timeout: configuration.timeout)
                if offset != 0 { state.withLock { $0.preferred = index } }
                return response
            } catch {
                guard error.code == .unavailable else {
                    throw AuditError(.etcdFailed, "etcd \(endpoints[index].display) \(Self.name(of: method)): \(error)",
                                     status: error)
                }
                // A failed TLS handshake is not an outage: the next endpoint must not hide a certificate that does
                // not verify (or a server that is not etcd).
                if endpoints[index].secure, Self.isTLSFailure(error.message) {
                    throw AuditError(.etcdUnavailable, "etcd \(endpoints[index].display): TLS handshake failed (\(error.message)); "
                        + "not trying other endpoints. Check that --cacert is the CA of etcd's server certificate and that "
                        + "--cert/--key are a client certificate etcd trusts", status: error)
                }
                failures.append("\(endpoints[index].display): \(error.message)")
            }
        }
        var message = "etcd is unreachable (\(failures.joined(separator: "; ")))"
        if endpoints.contains(where: \.secure) {
            message += "; if etcd is running, check that --cacert is the CA of etcd's server certificate and that "
                + "--cert/--key are a client certificate etcd trusts"
        }
        throw AuditError(.etcdUnavailable, message, status: GRPCStatus(.unavailable, failures.joined(separator: "; ")))
    }

    /// The auth token, fetched with Authenticate when missing or when `refresh` is set.
    private func token(refresh: Bool) throws(AuditError) -> String {
        if !refresh, let token = state.withLock({ $0.token }) { return token }
        var request = Etcdserverpb_AuthenticateRequest()
        request.name = configuration.user ?? ""
        request.password = configuration.password ?? ""
        let bytes: [UInt8]
        do { bytes = try request.serializedBytes() } catch {
            throw AuditError(.etcdFailed, "cannot encode the Authenticate request")
        }
        let response: Etcdserverpb_AuthenticateResponse
        do {
            response = try Etcdserverpb_AuthenticateResponse(serializedBytes: try send(EtcdMethod.authenticate, bytes,
                                                                                          authenticated: false))
        } catch let error as AuditError {
            throw AuditError(error.code, "etcd authentication as \(request.name) failed: \(error.message)", status: error.status)
        } catch {
            throw AuditError(.etcdFailed, "etcd sent an Authenticate response that does not parse")
        }
        state.withLock { $0.token = response.token }
        return response.token
    }

    /// The gRPC core reports handshake failures as UNAVAILABLE with the TLS library's words in the message.
    static func isTLSFailure(_ message: String) -> Bool {
        let lower = message.lowercased()
        return ["handshake", "ssl", "tls", "certificate"].contains { lower.contains($0) }
    }

    private static func name(of method: String) -> String {
        String(method.split(separator: "/").last ?? Substring(method))
    }
}

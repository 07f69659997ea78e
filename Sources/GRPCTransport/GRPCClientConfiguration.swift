import CGRPC

public enum GRPCClientCredentials: Sendable {
    /// Plaintext HTTP/2 (for unix sockets and tests).
    case insecure
    /// TLS. A nil root bundle means the core's default roots; the certificate chain and private key
    /// (PEM) enable client-certificate authentication and must be given together.
    case tls(rootCertificatesPEM: String?, certificateChainPEM: String?, privateKeyPEM: String?)
}

public struct GRPCClientConfiguration: Sendable {
    /// "unix:/path", "unix:///path", an absolute path, or "host:port" / "dns:///host:port".
    public var target: String
    public var credentials: GRPCClientCredentials
    /// The :authority header (and the TLS name checked against the server certificate). Defaults to
    /// "localhost" for unix targets, as kube-apiserver sends, and to the target host otherwise.
    public var authority: String?
    /// Largest response accepted, in bytes; -1 means unlimited. Default 4 MiB.
    public var maxReceiveMessageSize: Int = 4 * 1024 * 1024

    public init(target: String, credentials: GRPCClientCredentials = .insecure) {
        self.target = target
        self.credentials = credentials
    }
}

extension GRPCClientConfiguration {
    var coreTarget: String {
        if target.hasPrefix("/") { return "unix:" + target }
        return target
    }

    var isUnix: Bool { coreTarget.hasPrefix("unix:") }

    func validate() throws(GRPCStatus) {
        guard !target.isEmpty else { throw GRPCStatus(.invalidArgument, "empty client target") }
        guard maxReceiveMessageSize >= -1, maxReceiveMessageSize <= Int(Int32.max) else {
            throw GRPCStatus(.invalidArgument, "maxReceiveMessageSize must be -1 (unlimited) or fit in 31 bits")
        }
        guard case .tls(let roots, let chain, let key) = credentials else { return }
        if (chain == nil) != (key == nil) {
            throw GRPCStatus(.invalidArgument, "TLS client certificate and private key must be given together")
        }
        if let roots, !roots.contains("-----BEGIN CERTIFICATE-----") {
            throw GRPCStatus(.invalidArgument, "TLS root certificates are not PEM certificates")
        }
        if let chain, !chain.contains("-----BEGIN CERTIFICATE-----") {
            throw GRPCStatus(.invalidArgument, "TLS client certificate chain is not a PEM certificate")
        }
        if let key, !(key.contains("-----BEGIN") && key.contains("PRIVATE KEY-----")) {
            throw GRPCStatus(.invalidArgument, "TLS client private key is not a PEM private key")
        }
    }

    /// Creates the channel credentials (caller releases them), or throws.
    func makeCredentials() throws(GRPCStatus) -> OpaquePointer {
        switch credentials {
        case .insecure:
            return grpc_insecure_credentials_create()
        case .tls(let roots, let chain, let key):
            let created: OpaquePointer? = withOptionalCString(roots) { rootsPointer in
                withOptionalCString(chain) { chainPointer in
                    withOptionalCString(key) { keyPointer in
                        guard let chainPointer, let keyPointer else {
                            return grpc_ssl_credentials_create(rootsPointer, nil, nil, nil)
                        }
                        var pair = grpc_ssl_pem_key_cert_pair(private_key: keyPointer, cert_chain: chainPointer)
                        return grpc_ssl_credentials_create(rootsPointer, &pair, nil, nil)
                    }
                }
            }
            guard let created else {
                throw GRPCStatus(.invalidArgument, "the gRPC core could not create TLS credentials (no usable root certificates?)")
            }
            return created
        }
    }
}

private func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let string else { return body(nil) }
    return string.withCString { body($0) }
}

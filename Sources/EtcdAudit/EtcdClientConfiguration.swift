import Foundation

/// How to reach etcd: endpoints (`https://host:port`, `http://host:port` or `host:port`), mTLS client certificates
/// (kubeadm: `/etc/kubernetes/pki/etcd/ca.crt`, `apiserver-etcd-client.{crt,key}`) and optional user/password.
public struct EtcdClientConfiguration: Sendable {
    public var endpoints: [String]
    public var caCertificatePEM: String?
    public var certificatePEM: String?
    public var privateKeyPEM: String?
    public var user: String?
    public var password: String?
    /// Deadline of each call.
    public var timeout: Duration = .seconds(30)

    public init(endpoints: [String], caCertificatePEM: String? = nil, certificatePEM: String? = nil,
                privateKeyPEM: String? = nil, user: String? = nil, password: String? = nil) {
        self.endpoints = endpoints
        self.caCertificatePEM = caCertificatePEM
        self.certificatePEM = certificatePEM
        self.privateKeyPEM = privateKeyPEM
        self.user = user
        self.password = password
    }

    /// Reads the PEM files named on the command line.
    public init(endpoints: [String], caCertificateFile: String?, certificateFile: String?, privateKeyFile: String?,
                user: String?, password: String?) throws(AuditError) {
        func read(_ path: String?, _ flag: String) throws(AuditError) -> String? {
            guard let path else { return nil }
            do {
                return try String(contentsOfFile: path, encoding: .utf8)
            } catch {
                throw AuditError(.configuration, "cannot read \(flag) \(path): \((error as NSError).localizedDescription)")
            }
        }
        self.init(endpoints: endpoints, caCertificatePEM: try read(caCertificateFile, "--cacert"),
                  certificatePEM: try read(certificateFile, "--cert"), privateKeyPEM: try read(privateKeyFile, "--key"),
                  user: user, password: password)
    }

    var usesTLSMaterial: Bool { caCertificatePEM != nil || certificatePEM != nil || privateKeyPEM != nil }
}

/// One parsed endpoint.
struct EtcdEndpoint: Sendable, Equatable {
    var secure: Bool
    var host: String
    var port: Int

    /// `https://h:p` is TLS, `http://h:p` is plaintext; without a scheme TLS is used when certificates were given.
    init(parsing text: String, tlsByDefault: Bool) throws(AuditError) {
        var rest = Substring(text.trimmingCharacters(in: .whitespaces))
        if rest.hasPrefix("https://") {
            secure = true
            rest = rest.dropFirst("https://".count)
        } else if rest.hasPrefix("http://") {
            secure = false
            rest = rest.dropFirst("http://".count)
        } else if rest.contains("://") {
            throw AuditError(.configuration, "etcd endpoint \(text): only http:// and https:// are supported")
        } else {
            secure = tlsByDefault
        }
        while rest.hasSuffix("/") { rest = rest.dropLast() }
        let hostPart: Substring
        let portPart: Substring?
        if rest.hasPrefix("[") {  // [v6]:port
            guard let close = rest.firstIndex(of: "]") else {
                throw AuditError(.configuration, "etcd endpoint \(text): unterminated IPv6 address")
            }
            hostPart = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            portPart = after.hasPrefix(":") ? after.dropFirst() : (after.isEmpty ? nil : after)
        } else if let colon = rest.lastIndex(of: ":") {
            hostPart = rest[..<colon]
            portPart = rest[rest.index(after: colon)...]
        } else {
            hostPart = rest
            portPart = nil
        }
        guard !hostPart.isEmpty else { throw AuditError(.configuration, "etcd endpoint \(text): no host") }
        host = String(hostPart)
        if let portPart {
            guard let value = Int(portPart), (1...65535).contains(value) else {
                throw AuditError(.configuration, "etcd endpoint \(text): bad port")
            }
            port = value
        } else {
            port = 2379
        }
    }

    /// The gRPC target.
    var target: String { host.contains(":") ? "ipv6:[\(host)]:\(port)" : "\(host):\(port)" }
    var display: String { "\(secure ? "https" : "http")://\(host.contains(":") ? "[\(host)]" : host):\(port)" }
}

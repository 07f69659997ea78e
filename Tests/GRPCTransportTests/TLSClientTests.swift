import Foundation
import Testing
@testable import GRPCTransport

/// TLS client set-up, failure modes, and mutual TLS end to end against a TLS GRPCServer on TCP.
@Suite("TLS client", .serialized)
struct TLSClientTests {
    /// A CA plus a client certificate signed by it, made with the openssl command line tool.
    struct Credentials {
        let caPEM: String
        let certificatePEM: String
        let keyPEM: String
        let serverCertificatePEM: String
        let serverKeyPEM: String
    }

    static func makeCredentials(in directory: TemporaryDirectory) throws -> Credentials {
        func openssl(_ arguments: [String]) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            process.arguments = arguments
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw POSIXError(.EINVAL) }
        }
        let ca = directory.file("ca"), client = directory.file("client"), server = directory.file("server")
        try openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "1", "-subj", "/CN=test-ca"])
        try openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", client + ".key", "-out", client + ".csr", "-subj", "/CN=test-client"])
        try openssl(["x509", "-req", "-in", client + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                     "-CAcreateserial", "-out", client + ".pem", "-days", "1"])
        try openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", server + ".key", "-out", server + ".csr", "-subj", "/CN=localhost"])
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\n".write(toFile: server + ".ext", atomically: true, encoding: .utf8)
        try openssl(["x509", "-req", "-in", server + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                     "-CAcreateserial", "-out", server + ".pem", "-days", "1", "-extfile", server + ".ext"])
        func read(_ path: String) throws -> String { try String(contentsOfFile: path, encoding: .utf8) }
        return Credentials(
            caPEM: try read(ca + ".pem"), certificatePEM: try read(client + ".pem"), keyPEM: try read(client + ".key"),
            serverCertificatePEM: try read(server + ".pem"), serverKeyPEM: try read(server + ".key"))
    }

    @Test("malformed TLS settings are rejected when the client is created")
    func badSettings() throws {
        let cases: [GRPCClientCredentials] = [
            .tls(rootCertificatesPEM: "not a certificate", certificateChainPEM: nil, privateKeyPEM: nil),
            .tls(rootCertificatesPEM: nil, certificateChainPEM: "-----BEGIN CERTIFICATE-----\n", privateKeyPEM: nil),
            .tls(rootCertificatesPEM: nil, certificateChainPEM: "garbage", privateKeyPEM: "garbage"),
        ]
        for credentials in cases {
            let result = Result { () throws(GRPCStatus) in
                try GRPCClient(configuration: GRPCClientConfiguration(target: "127.0.0.1:1", credentials: credentials))
            }
            guard case .failure(let status) = result else {
                Issue.record("accepted \(credentials)")
                continue
            }
            #expect(status.code == .invalidArgument)
        }
    }

    @Test("an mTLS client against a plaintext server fails with unavailable")
    func handshakeFailure() throws {
        let directory = try TemporaryDirectory()
        let credentials = try Self.makeCredentials(in: directory)
        let server = GRPCServer(configuration: GRPCServerConfiguration(address: "127.0.0.1:0"), handlers: TestMethods.handlers)
        try server.startServing()
        defer { server.shutdown(gracePeriod: .zero) }
        let port = try #require(server.boundPort)

        var configuration = GRPCClientConfiguration(
            target: "127.0.0.1:\(port)",
            credentials: .tls(
                rootCertificatesPEM: credentials.caPEM, certificateChainPEM: credentials.certificatePEM,
                privateKeyPEM: credentials.keyPEM))
        configuration.authority = "localhost"
        let client = try GRPCClient(configuration: configuration)
        let status = statusOf { () throws(GRPCStatus) in
            try client.unary(method: TestMethods.echo, request: [1], metadata: [(key: "token", value: "t")], timeout: .seconds(5))
        }
        #expect(status.code == .unavailable, "\(status)")
    }

    @Test("mutual TLS works end to end; clients without a trusted certificate are refused")
    func mutualTLS() throws {
        let directory = try TemporaryDirectory()
        let credentials = try Self.makeCredentials(in: directory)
        var serverConfiguration = GRPCServerConfiguration(address: "127.0.0.1:0")
        serverConfiguration.tls = GRPCServerTLS(
            certificateChainPEM: credentials.serverCertificatePEM, privateKeyPEM: credentials.serverKeyPEM,
            clientCARootsPEM: credentials.caPEM)
        let server = GRPCServer(configuration: serverConfiguration, handlers: TestMethods.handlers)
        try server.startServing()
        defer { server.shutdown(gracePeriod: .zero) }
        let port = try #require(server.boundPort)

        func client(_ tls: GRPCClientCredentials, authority: String? = "localhost") throws -> GRPCClient {
            var configuration = GRPCClientConfiguration(target: "127.0.0.1:\(port)", credentials: tls)
            configuration.authority = authority
            return try GRPCClient(configuration: configuration)
        }
        let good = try client(.tls(
            rootCertificatesPEM: credentials.caPEM, certificateChainPEM: credentials.certificatePEM,
            privateKeyPEM: credentials.keyPEM))
        #expect(try good.unary(method: TestMethods.echo, request: [1, 2, 3], metadata: [(key: "token", value: "t")]) == [1, 2, 3])
        let inspected = String(decoding: try good.unary(method: TestMethods.inspect, request: [],
                                                        metadata: [(key: "token", value: "secret-token")]), as: UTF8.self)
        #expect(inspected.contains("token=secret-token"))

        // Without a client certificate the server refuses the handshake.
        let anonymous = try client(.tls(rootCertificatesPEM: credentials.caPEM, certificateChainPEM: nil, privateKeyPEM: nil))
        #expect(statusOf { () throws(GRPCStatus) in try anonymous.unary(method: TestMethods.echo, request: [], timeout: .seconds(5)) }
            .code == .unavailable)

        // A client that does not trust the server's CA refuses the server.
        let other = try Self.makeCredentials(in: try TemporaryDirectory())
        let distrustful = try client(.tls(
            rootCertificatesPEM: other.caPEM, certificateChainPEM: credentials.certificatePEM, privateKeyPEM: credentials.keyPEM))
        #expect(statusOf { () throws(GRPCStatus) in try distrustful.unary(method: TestMethods.echo, request: [], timeout: .seconds(5)) }
            .code == .unavailable)

        // The name checked against the certificate is the authority.
        let wrongName = try client(.tls(
            rootCertificatesPEM: credentials.caPEM, certificateChainPEM: credentials.certificatePEM,
            privateKeyPEM: credentials.keyPEM), authority: "etcd.example")
        #expect(statusOf { () throws(GRPCStatus) in try wrongName.unary(method: TestMethods.echo, request: [], timeout: .seconds(5)) }
            .code == .unavailable)
    }

    @Test("a server with an unusable TLS key fails to start")
    func badServerKey() throws {
        var configuration = GRPCServerConfiguration(address: "127.0.0.1:0")
        configuration.tls = GRPCServerTLS(
            certificateChainPEM: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            privateKeyPEM: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        let server = GRPCServer(configuration: configuration, handlers: TestMethods.handlers)
        #expect(throws: GRPCStatus.self) { try server.startServing() }
    }

    @Test("PEM-shaped but invalid key material fails at call time, not with a crash")
    func invalidKeyMaterial() throws {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        let client = try GRPCClient(configuration: GRPCClientConfiguration(
            target: "127.0.0.1:1", credentials: .tls(rootCertificatesPEM: pem, certificateChainPEM: pem, privateKeyPEM: key)))
        let status = statusOf { () throws(GRPCStatus) in
            try client.unary(method: TestMethods.echo, request: [], timeout: .seconds(5))
        }
        #expect(status.code != .ok)
    }
}

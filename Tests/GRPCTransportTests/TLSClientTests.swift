import Foundation
import Testing
@testable import GRPCTransport

/// The server side is insecure only, so these tests check the TLS client's set-up and failure modes;
/// real mTLS is exercised against etcd elsewhere.
@Suite("TLS client", .serialized)
struct TLSClientTests {
    /// A CA plus a client certificate signed by it, made with the openssl command line tool.
    struct Credentials {
        let caPEM: String
        let certificatePEM: String
        let keyPEM: String
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
        let ca = directory.file("ca"), client = directory.file("client")
        try openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "1", "-subj", "/CN=test-ca"])
        try openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", client + ".key", "-out", client + ".csr", "-subj", "/CN=test-client"])
        try openssl(["x509", "-req", "-in", client + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                     "-CAcreateserial", "-out", client + ".pem", "-days", "1"])
        return Credentials(
            caPEM: try String(contentsOfFile: ca + ".pem", encoding: .utf8),
            certificatePEM: try String(contentsOfFile: client + ".pem", encoding: .utf8),
            keyPEM: try String(contentsOfFile: client + ".key", encoding: .utf8))
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
        try server.start()
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

import ArgumentParser
import Foundation
import GRPCTransport
import KMSProto
import KMSServer

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Call the plugin's KMS v2 Status; exit 0 only when it is healthy (1 unhealthy, 2 unreachable).")

    @Option(help: ArgumentHelp("The plugin's socket (env P11KMS_LISTEN).", valueName: "address"))
    var listen: String?

    @Option(help: ArgumentHelp("Output: text or json.", valueName: "format"))
    var format: String = "text"

    @Option(help: ArgumentHelp("Seconds to wait for the answer.", valueName: "seconds"))
    var timeout: Double = 5

    func run() throws {
        Signals.blockTermination()
        let env = ProcessInfo.processInfo.environment
        let address = try SocketAddress(listen: listen ?? env["P11KMS_LISTEN"] ?? "unix:///var/run/kms/p11kms.sock")
        let response: V2_StatusResponse
        do {
            let client = try GRPCClient(configuration: GRPCClientConfiguration(target: address.grpcAddress))
            defer { client.close() }
            let bytes = try client.unary(method: KMSv2Method.status, request: try V2_StatusRequest().serializedBytes(),
                                         timeout: .milliseconds(Int(timeout * 1000)))
            response = try V2_StatusResponse(serializedBytes: bytes)
        } catch let error as GRPCStatus {
            fail("cannot reach the plugin at \(address): \(error.message) (\(error.code))", code: 2)
        } catch {
            fail("cannot reach the plugin at \(address): \(error)", code: 2)
        }
        let healthy = response.healthz == "ok"
        if format == "json" {
            let object: [String: Any] = ["version": response.version, "healthz": response.healthz, "key_id": response.keyID, "healthy": healthy]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("healthz: \(response.healthz)\nversion: \(response.version)\nkey_id: \(response.keyID)")
        }
        if !healthy { throw ExitCode(1) }
    }
}

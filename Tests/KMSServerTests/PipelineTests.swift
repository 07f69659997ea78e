import Foundation
import GRPCTransport
import KMSProto
import KMSServer
import KeyService
import Logging
import PKCS11
import SwiftProtobuf
import Testing
import TestSupport

/// A plugin server on a pooled SoftHSM token, driven in this process through the same unary pipeline as its socket.
func makePlugin(probeInterval: Duration = .seconds(2)) throws -> PluginServer {
    let token = Token(configuration: TokenConfiguration(
        modulePath: SoftHSMFixture.modulePath, tokenLabel: SoftHSMFixture.shared.takeToken(),
        pin: Array(SoftHSMFixture.userPIN.utf8)))
    let ring = KeyRing(token: token)
    _ = try ring.initialize()
    var configuration = PluginConfiguration(listen: try SocketAddress(listen: "unix:///nonexistent/in-process.sock"))
    configuration.httpListen = nil
    configuration.probeInterval = probeInterval
    return PluginServer(configuration: configuration, service: EnvelopeService(keyRing: ring), metrics: KMSMetrics(),
                        logger: Logger(label: "test"), runtimeVersion: "test")
}

func bytes(_ message: some SwiftProtobuf.Message) throws -> [UInt8] { try message.serializedBytes() }

@Suite("KMS pipeline in-process (no child process, no socket)")
struct PipelineTests {
    @Test("Encrypt and Decrypt round trip through the pipeline; Status reports the current key after a probe")
    func roundTrip() throws {
        let plugin = try makePlugin()
        var encrypt = V2_EncryptRequest()
        encrypt.plaintext = Data(SecureRandom.bytes(32))
        encrypt.uid = "in-process"
        let wrapped = try V2_EncryptResponse(serializedBytes: try plugin.call(KMSv2Method.encrypt, try bytes(encrypt)))
        var decrypt = V2_DecryptRequest()
        decrypt.ciphertext = wrapped.ciphertext
        decrypt.keyID = wrapped.keyID
        let opened = try V2_DecryptResponse(serializedBytes: try plugin.call(KMSv2Method.decrypt, try bytes(decrypt)))
        #expect(opened.plaintext == encrypt.plaintext)

        // Before any probe the health is "starting"; one probe later it is ok with the key.
        let before = try V2_StatusResponse(serializedBytes: try plugin.call(KMSv2Method.status, try bytes(V2_StatusRequest())))
        #expect(before.healthz == "starting")
        plugin.health.probe()
        let after = try V2_StatusResponse(serializedBytes: try plugin.call(KMSv2Method.status, try bytes(V2_StatusRequest())))
        #expect(after.healthz == "ok" && after.keyID == wrapped.keyID)
    }

    @Test("malformed requests are invalidArgument; a call past its deadline is deadlineExceeded and never started")
    func refusals() throws {
        let plugin = try makePlugin()
        #expect(throws: GRPCStatus(.invalidArgument, "malformed EncryptRequest")) {
            _ = try plugin.call(KMSv2Method.encrypt, [0xff, 0xff, 0xff])
        }
        #expect(throws: GRPCStatus(.invalidArgument, "malformed DecryptRequest")) {
            _ = try plugin.call(KMSv2Method.decrypt, [0x0a, 0x05, 0x01])
        }
        var encrypt = V2_EncryptRequest()
        encrypt.plaintext = Data(SecureRandom.bytes(32))
        do {
            _ = try plugin.call(KMSv2Method.encrypt, try bytes(encrypt), deadline: .now - .milliseconds(1))
            Issue.record("an expired call was run")
        } catch {
            #expect((error as? GRPCStatus)?.code == .deadlineExceeded)
        }
        var v1 = V1beta1_VersionRequest()
        v1.version = "v9"
        do {
            _ = try plugin.call(KMSv1Method.version, try bytes(v1))
            Issue.record("a wrong version was accepted")
        } catch {
            #expect((error as? GRPCStatus)?.code == .invalidArgument)
        }
    }

    @Test("health is stale once no probe has answered for staleAfter, whatever the last answer said")
    func staleHealth() throws {
        let plugin = try makePlugin(probeInterval: .milliseconds(200))
        let health = plugin.health
        #expect(health.staleAfter == .seconds(1), "3 x 0.2 s, but never below 1 s")
        health.probe()
        #expect(health.health.healthy)
        let later = health.health(at: .now + .seconds(2))
        #expect(!later.healthy && later.reason.hasPrefix("token not answering for "))
        #expect(HealthMonitor.defaultStaleAfter(refreshInterval: .seconds(5)) == .seconds(10))
    }
}

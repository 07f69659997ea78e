import Foundation
import GRPCTransport
import Testing
import TestSupport

/// p11kms through a real PKCS#11 proxy: `p11-kit server` exports a SoftHSM token on a unix socket and p11kms loads
/// `p11-kit-client.so`. Debian bookworm's p11-kit 0.24.1 forwards login, object search, attributes and key
/// generation, but not CKM_AES_GCM (mechanism parameters are forwarded from p11-kit 0.25 on). What the proxy forwards
/// must work, and what it does not must fail loudly, never as a healthy plugin. deploy/hsm/README.md documents it.
@Suite("p11-kit proxy", .enabled(if: P11KitProxy.available))
struct P11KitProxyTests {
    /// What p11kms reports through p11-kit 0.24 (quoted in deploy/hsm/README.md, which a test keeps in step).
    static let measuredInitError = "init failed: token error: C_EncryptInit failed: CKR_MECHANISM_INVALID"
    static let measuredHealthz = "token check failed: token error: C_EncryptInit failed: CKR_MECHANISM_INVALID"

    @Test func whatTheProxyForwardsWorksAndAESGCMFailsLoudly() throws {
        let proxy = try P11KitProxy(name: "p11kit")
        defer { proxy.stop() }
        let forwardsGCM = P11KitProxy.forwardsAESGCM

        // Login, object search and attributes through the proxy: the empty token lists no key.
        let empty = try proxy.p11kms(["keys", "--format", "json"])
        #expect(empty.status == 0, "keys through the proxy: \(empty.stderr)")
        #expect(try keyList(empty.stdout).isEmpty)

        // init through the proxy: C_GenerateKey is forwarded, so the key is made inside the token; its AES-GCM
        // self-test is not, so with p11-kit 0.24 init stops with the mechanism named and leaves the key pending.
        let initialized = try proxy.p11kms(["init"])
        let viaProxy = try keyList(try proxy.p11kms(["keys", "--format", "json"]).stdout)
        #expect(viaProxy.count == 1, "keys through the proxy lists the new key: \(viaProxy)")
        let keyID = try #require(viaProxy.first?["key_id"] as? String)
        if forwardsGCM {
            #expect(initialized.status == 0, "\(initialized.stderr)")
            #expect(initialized.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == keyID)
            #expect(viaProxy.first?["state"] as? String == "current")
        } else {
            #expect(initialized.status == 1)
            #expect(initialized.stderr.contains(Self.measuredInitError), "\(initialized.stderr)")
            #expect(initialized.stdout.isEmpty)
            #expect(viaProxy.first?["state"] as? String == "pending", "an unverified key is never made current")
        }

        // Straight at SoftHSM: the key is in the token, generated there, with the root-key attributes.
        let attributes = try proxy.softHSMObjects(login: true)
        #expect(attributes.contains("Secret Key Object; AES length 32"), "\(attributes)")
        #expect(attributes.contains("ID:         \(keyID.dropFirst("p11kms-".count))"), "\(attributes)")
        #expect(attributes.contains("Usage:      encrypt, decrypt\n"), "no wrap/unwrap: \(attributes)")
        #expect(attributes.contains("Access:     sensitive, always sensitive, never extractable, local"), "generated inside the token: \(attributes)")
        #expect(!(try proxy.softHSMObjects(login: false)).contains("Secret Key Object"), "a private object is hidden without login")

        if !forwardsGCM {
            // Finished straight at SoftHSM, init verifies and promotes the same key; the proxy then sees it current.
            let direct = try proxy.p11kmsDirect(["init"])
            #expect(direct.status == 0, "\(direct.stderr)")
            #expect(direct.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == keyID)
            let after = try keyList(try proxy.p11kms(["keys", "--format", "json"]).stdout)
            #expect(after.first?["state"] as? String == "current")
            #expect(after.count == 1)
        }

        // serve through the proxy: healthy and round-tripping when GCM is forwarded; otherwise Status names the
        // failing call and mechanism, `p11kms status` exits 1, and Encrypt is refused.
        let serve = try proxy.serve()
        defer { proxy.stopServe(serve) }
        let client = try KMSClient(socketPath: proxy.kmsSocket)
        // The first health probe runs once serving has started: wait for its verdict.
        var answer = try? client.status()
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline, answer.map({ $0.healthz != "ok" && !$0.healthz.contains("CKR_") }) ?? true {
            usleep(100_000)
            answer = try? client.status()
        }
        let status = try #require(answer, "Status never answered through the proxy")
        #expect(status.keyID == keyID)
        let statusCommand = try Command.run(PluginProcess.executable, ["status", "--listen", "unix://\(proxy.kmsSocket)"])
        if forwardsGCM {
            #expect(status.healthz == "ok")
            #expect(statusCommand.status == 0)
            let sealed = try client.encrypt(Array(repeating: 7, count: 32))
            #expect(try client.decrypt(sealed.ciphertext, keyID: sealed.keyID, annotations: sealed.annotations) == Array(repeating: 7, count: 32))
        } else {
            #expect(status.healthz == Self.measuredHealthz)
            #expect(statusCommand.status == 1)
            #expect(statusCommand.stdout.contains("CKR_MECHANISM_INVALID"), "\(statusCommand.stdout)")
            #expect(throws: GRPCStatus.self) { try client.encrypt(Array(repeating: 7, count: 32)) }
            do {
                _ = try client.encrypt(Array(repeating: 7, count: 32))
            } catch let error as GRPCStatus {
                #expect(error.code == .internal, "Encrypt through the 0.24 proxy: \(error)")
                #expect(error.message.contains("CKR_MECHANISM_INVALID"), "\(error)")
            }
        }
        #expect(proxy.stopServe(serve) == 0)
    }

    private func keyList(_ json: String) throws -> [[String: Any]] {
        let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        return try #require(object?["keys"] as? [[String: Any]], "keys --format json: \(json)")
    }
}

import Foundation
import GRPCTransport
import KMSProto
import Testing
import TestSupport

struct KeyListing: Decodable {
    struct Key: Decodable { let key_id: String; let state: String; let label: String; let created: String; let generation: Int }
    let keys: [Key]
    var current: [Key] { keys.filter { $0.state == "current" } }
}

extension PluginProcess {
    func keys() throws -> KeyListing {
        let result = try run(["keys", "--format", "json"] + tokenArguments)
        guard result.status == 0 else { throw FixtureError("keys failed: \(result.stderr)") }
        return try JSONDecoder().decode(KeyListing.self, from: Data(result.stdout.utf8))
    }

    func rotate() throws -> String {
        let result = try run(["rotate"] + tokenArguments)
        guard result.status == 0 else { throw FixtureError("rotate failed: \(result.stderr)") }
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Polls Status until it reports `keyID`; returns how long that took.
    func waitForKey(_ keyID: String, client: KMSClient, timeout: TimeInterval = 5) throws -> TimeInterval {
        let start = Date()
        while Date().timeIntervalSince(start) < timeout {
            if try client.status().keyID == keyID { return Date().timeIntervalSince(start) }
            usleep(50_000)
        }
        throw FixtureError("Status did not report \(keyID) within \(timeout) s")
    }
}

@Suite("Root-key rotation, retirement and KMS v1")
struct RotationTests {
    @Test("rotate is picked up by a running plugin within 5 s; every older key still decrypts; v1 too")
    func rotateLive() throws {
        let plugin = try PluginProcess(name: "rotate")
        try plugin.start()
        let client = try plugin.client()
        var wrapped: [(Data, String, [UInt8])] = []
        var v1Wrapped: [(Data, [UInt8])] = []
        var keyIDs = [plugin.initialKeyID]
        #expect(try client.v1Version().version == "v1beta1")
        for round in 0..<4 {
            let seed = randomBytes(32)
            let response = try client.encrypt(seed)
            #expect(response.keyID == keyIDs.last)
            wrapped.append((response.ciphertext, response.keyID, seed))
            let dek = randomBytes(32)
            v1Wrapped.append((try client.v1Encrypt(dek), dek))
            let next = try plugin.rotate()
            #expect(!keyIDs.contains(next), "round \(round): key_id reused")
            keyIDs.append(next)
            let waited = try plugin.waitForKey(next, client: client)
            #expect(waited < 5)
            #expect(try client.encrypt(randomBytes(32)).keyID == next)
            for (ciphertext, keyID, seed) in wrapped {
                #expect(try client.decrypt(ciphertext, keyID: keyID) == seed)
            }
            for (cipher, dek) in v1Wrapped {
                #expect(try client.v1Decrypt(cipher) == dek)
            }
        }
        let listing = try plugin.keys()
        #expect(listing.keys.map(\.key_id) == keyIDs)
        #expect(listing.current.map(\.key_id) == [keyIDs.last!])
        #expect(listing.keys.filter { $0.state == "active" }.count == 4)
        #expect(listing.keys.map(\.generation) == [1, 2, 3, 4, 5])
    }

    @Test("retire refuses decryption with a clear error, restore brings it back, destroy refuses the current key")
    func retireRestoreDestroy() throws {
        let plugin = try PluginProcess(name: "retire")
        try plugin.start()
        let client = try plugin.client()
        let key1 = plugin.initialKeyID
        let seed = randomBytes(32)
        let old = try client.encrypt(seed)
        let v1Old = try client.v1Encrypt(seed)
        let key2 = try plugin.rotate()
        _ = try plugin.waitForKey(key2, client: client)

        // The current key can be neither retired nor destroyed.
        #expect(try plugin.run(["retire", key2] + plugin.tokenArguments).status == 1)
        #expect(try plugin.run(["destroy", key2, "--yes-destroy-forever"] + plugin.tokenArguments).status == 1)
        // An active key cannot be destroyed either, and destroy needs its confirmation flag.
        #expect(try plugin.run(["destroy", key1, "--yes-destroy-forever"] + plugin.tokenArguments).status == 1)
        #expect(try plugin.run(["destroy", key1] + plugin.tokenArguments).status == 2)

        #expect(try plugin.run(["retire", key1] + plugin.tokenArguments).status == 0)
        #expect(try plugin.keys().keys.first { $0.key_id == key1 }?.state == "retired")
        do {
            _ = try client.decrypt(old.ciphertext, keyID: key1)
            Issue.record("a retired key decrypted")
        } catch let error as GRPCStatus {
            #expect(error.code == .failedPrecondition)
            #expect(error.message.contains("retired"))
        }
        expectStatus(.failedPrecondition) { _ = try client.v1Decrypt(v1Old) }
        #expect(try client.status().healthz == "ok")

        #expect(try plugin.run(["restore", key1] + plugin.tokenArguments).status == 0)
        #expect(try client.decrypt(old.ciphertext, keyID: key1) == seed)
        #expect(try client.v1Decrypt(v1Old) == seed)

        #expect(try plugin.run(["retire", key1] + plugin.tokenArguments).status == 0)
        let destroyed = try plugin.run(["destroy", key1, "--yes-destroy-forever"] + plugin.tokenArguments)
        #expect(destroyed.status == 0)
        #expect(destroyed.stderr.contains("WARNING"))
        #expect(try plugin.keys().keys.map(\.key_id) == [key2])
        // Give the plugin's key-list refresh a moment, then the ciphertext names a key the token no longer holds.
        usleep(2_500_000)
        expectStatus(.invalidArgument) { _ = try client.decrypt(old.ciphertext, keyID: key1) }
        #expect(try plugin.run(["keys"] + plugin.tokenArguments).status == 0)
    }

    @Test("two plugin processes on one token agree on the current key after a rotation")
    func twoProcesses() throws {
        let first = try PluginProcess(name: "twins")
        try first.start()
        // A second serve on the same SoftHSM directory and token, on its own socket.
        let secondSocket = first.hsm.root.appendingPathComponent("second.sock").path
        let second = Process()
        second.executableURL = URL(fileURLWithPath: PluginProcess.executable)
        second.arguments = ["serve", "--listen", "unix://\(secondSocket)"] + first.tokenArguments
        second.environment = first.environment
        second.standardError = FileHandle.nullDevice
        try second.run()
        defer { second.terminate(); second.waitUntilExit() }
        var secondClient: KMSClient?
        for _ in 0..<100 where secondClient == nil {
            if let client = try? KMSClient(socketPath: secondSocket), (try? client.status().healthz) == "ok" { secondClient = client }
            usleep(50_000)
        }
        let a = try first.client()
        let b = try #require(secondClient)
        #expect(try a.status().keyID == b.status().keyID)
        let next = try first.rotate()
        _ = try first.waitForKey(next, client: a)
        _ = try first.waitForKey(next, client: b)
        // Each decrypts what the other wrapped.
        let seed = randomBytes(32)
        let fromA = try a.encrypt(seed)
        let fromB = try b.encrypt(seed)
        #expect(fromA.keyID == next && fromB.keyID == next)
        #expect(try b.decrypt(fromA.ciphertext, keyID: next) == seed)
        #expect(try a.decrypt(fromB.ciphertext, keyID: next) == seed)
    }

    @Test("kill -9 at many points of rotate: always exactly one current key, nothing lost, rotate again finishes")
    func crashSafety() throws {
        let plugin = try PluginProcess(name: "crash")
        try plugin.start()
        let client = try plugin.client()
        var wrapped: [(Data, String, [UInt8])] = []
        // Time a full rotate to spread the kill points over it.
        let t0 = Date()
        _ = try plugin.rotate()
        let duration = Date().timeIntervalSince(t0)
        var killedMidway = 0
        for attempt in 0..<24 {
            let seed = randomBytes(32)
            let response = try client.encrypt(seed)
            wrapped.append((response.ciphertext, response.keyID, seed))
            let rotate = Process()
            rotate.executableURL = URL(fileURLWithPath: PluginProcess.executable)
            rotate.arguments = ["rotate"] + plugin.tokenArguments
            rotate.environment = plugin.environment
            rotate.standardOutput = FileHandle.nullDevice
            rotate.standardError = FileHandle.nullDevice
            try rotate.run()
            let delay = duration * Double(attempt) / 20.0
            usleep(useconds_t(delay * 1_000_000))
            kill(rotate.processIdentifier, SIGKILL)
            rotate.waitUntilExit()
            if rotate.terminationReason == .uncaughtSignal { killedMidway += 1 }
            let listing = try plugin.keys()
            #expect(listing.current.count == 1, "attempt \(attempt): \(listing.keys.map { "\($0.key_id) \($0.state)" })")
            #expect(Set(listing.keys.map(\.key_id)).count == listing.keys.count)
            for (ciphertext, keyID, seed) in wrapped {
                #expect(try client.decrypt(ciphertext, keyID: keyID) == seed, "attempt \(attempt)")
            }
        }
        #expect(killedMidway > 0)
        let final = try plugin.rotate()
        let listing = try plugin.keys()
        #expect(listing.current.map(\.key_id) == [final])
        _ = try plugin.waitForKey(final, client: client)
        for (ciphertext, keyID, seed) in wrapped {
            #expect(try client.decrypt(ciphertext, keyID: keyID) == seed)
        }
    }

    @Test("--status-version v2beta1 for 1.27-1.28 apiservers")
    func v2beta1() throws {
        let plugin = try PluginProcess(name: "beta")
        try plugin.start(["--status-version", "v2beta1"])
        #expect(try plugin.client().status().version == "v2beta1")
    }
}

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

    @Test("destroy consults an audit: refused while a Secret is stored under the key, allowed once none is")
    func destroyWithAudit() throws {
        let plugin = try PluginProcess(name: "audit-destroy", initialize: true)
        let key1 = plugin.initialKeyID
        let key2 = try plugin.rotate()
        #expect(try plugin.run(["retire", key1] + plugin.tokenArguments).status == 0)
        let audit = plugin.hsm.root.appendingPathComponent("audit.json").path
        func writeAudit(_ keyIDs: [String], failed: Int = 0) throws {
            let secrets = keyIDs.enumerated().map { i, key in
                "{\"namespace\": \"fabric\", \"name\": \"peer\(i)-msp\", \"state\": \"\(key == key2 ? "current" : "unknown-key")\", \"provider\": \"p11kms\", \"key_id\": \"\(key)\"}"
            }
            let failures = (0..<failed).map { _ in "{\"key_id\": \"\(key1)\", \"error\": \"retired\", \"secrets\": []}" }
            // The scope `p11kms audit --format json` records: complete, of the default prefix, made just now.
            let formatter = ISO8601DateFormatter()
            let scope = "{\"provider\": \"p11kms\", \"etcd_prefix\": \"/registry/\", \"resources\": [\"secrets\"], \"namespaces\": [], \"name_filter\": \"\", \"prefixes\": [\"/registry/secrets/\"], \"revision\": 7, \"time\": \"\(formatter.string(from: Date()))\", \"complete\": true}"
            try "{\"summary\": {\"total\": \(keyIDs.count), \"by_state\": {}}, \"scope\": \(scope), \"secrets\": [\(secrets.joined(separator: ","))], \"verify\": {\"checked\": 1, \"failed\": [\(failures.joined(separator: ","))]}}"
                .write(toFile: audit, atomically: true, encoding: .utf8)
        }
        try writeAudit([key2, key1, key2])
        let refused = try plugin.run(["destroy", key1, "--yes-destroy-forever", "--audit-json", audit] + plugin.tokenArguments)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("1 value(s) still stored under \(key1)") && refused.stderr.contains("fabric/peer1-msp"))
        try writeAudit([key2, key2], failed: 1)
        #expect(try plugin.run(["destroy", key1, "--yes-destroy-forever", "--audit-json", audit] + plugin.tokenArguments).status == 1)
        #expect(try plugin.keys().keys.contains { $0.key_id == key1 })
        try writeAudit([key2, key2])
        let allowed = try plugin.run(["destroy", key1, "--yes-destroy-forever", "--audit-json", audit] + plugin.tokenArguments)
        #expect(allowed.status == 0, "\(allowed.stderr)")
        #expect(try plugin.keys().keys.map(\.key_id) == [key2])
    }

    @Test("two plugin processes on one token agree on the current key after a rotation")
    func twoProcesses() throws {
        let first = try PluginProcess(name: "twins")
        try first.start()
        // A second serve on the same SoftHSM directory and token, on its own socket.
        let secondSocket = first.hsm.root.appendingPathComponent("second.sock").path
        let second = Process()
        second.executableURL = URL(fileURLWithPath: PluginProcess.executable)
        second.arguments = ["serve", "--listen", "unix://\(secondSocket)", "--http-listen", "off"] + first.tokenArguments
        second.environment = first.environment
        second.standardError = FileHandle.nullDevice
        try second.run()
        ChildProcesses.register(second.processIdentifier)
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

    /// Kills `p11kms rotate` with SIGKILL at many points and checks the invariants after each: exactly one current
    /// key, every ciphertext ever returned still decrypts, and a final rotate completes the job.
    ///
    /// The rotate under test runs through the fault-injecting module (forwarding to SoftHSM) with a private plan and
    /// call log: kill points are taken (a) deterministically inside chosen PKCS#11 calls, held open by an injected
    /// delay, and (b) at random times. All of them come after `C_Login` has returned: SoftHSM 2.6.1's file store
    /// rewrites token.object in place (truncate, then write) on every login, and a SIGKILL inside that write
    /// destroys the token for every PKCS#11 client — a property of SoftHSM's store that no client can change.
    @Test("kill -9 at many points of rotate: always exactly one current key, nothing lost, rotate again finishes")
    func crashSafety() throws {
        let plugin = try PluginProcess(name: "crash")
        try plugin.start()
        let client = try plugin.client()
        let faultRoot = try TemporaryDirectory.make(prefix: "crash-plan")
        let planPath = faultRoot.appendingPathComponent("plan").path
        let callLog = faultRoot.appendingPathComponent("calls.log").path
        let arguments = ["rotate", "--module", FaultModule.path, "--token-label", plugin.tokenLabel, "--pin-file", plugin.pinFile]
        var environment = plugin.environment
        environment["FAULTPKCS11_MODULE"] = SoftHSMFixture.modulePath
        environment["FAULTPKCS11_CONTROL"] = planPath
        environment["FAULTPKCS11_LOG"] = callLog

        func loggedLogin() -> Bool {
            ((try? String(contentsOfFile: callLog, encoding: .utf8)) ?? "").contains(" C_Login ")
        }

        /// Starts rotate with `plan`, waits until it has logged in, waits `after` more, then kills it.
        func killRotate(plan: String, after: TimeInterval) throws -> Bool {
            try plan.write(toFile: planPath, atomically: true, encoding: .utf8)
            try "".write(toFile: callLog, atomically: false, encoding: .utf8)
            let rotate = Process()
            rotate.executableURL = URL(fileURLWithPath: PluginProcess.executable)
            rotate.arguments = arguments
            rotate.environment = environment
            rotate.standardOutput = FileHandle.nullDevice
            rotate.standardError = FileHandle.nullDevice
            try rotate.run()
            let deadline = Date().addingTimeInterval(10)
            while !loggedLogin() && rotate.isRunning && Date() < deadline { usleep(2_000) }
            usleep(useconds_t(after * 1_000_000))
            kill(rotate.processIdentifier, SIGKILL)
            rotate.waitUntilExit()
            return rotate.terminationReason == .uncaughtSignal
        }

        var wrapped: [(Data, String, [UInt8])] = []
        func checkInvariants(_ label: String) throws {
            let listing = try plugin.keys()
            #expect(listing.current.count == 1, "\(label): \(listing.keys.map { "\($0.key_id) \($0.state)" })")
            #expect(Set(listing.keys.map(\.key_id)).count == listing.keys.count)
            for (ciphertext, keyID, seed) in wrapped {
                #expect(try client.decrypt(ciphertext, keyID: keyID) == seed, "\(label)")
            }
            let seed = randomBytes(32)
            let response = try client.encrypt(seed)
            wrapped.append((response.ciphertext, response.keyID, seed))
        }
        try checkInvariants("start")

        // (a) Inside each PKCS#11 call of a rotation, held open for 400 ms.
        var killed = 0
        for function in ["C_FindObjectsInit", "C_GetAttributeValue", "C_GenerateKey", "C_EncryptInit", "C_Encrypt",
                         "C_DecryptInit", "C_Decrypt", "C_SetAttributeValue"] {
            if try killRotate(plan: "delay \(function) 400\n", after: 0.15) { killed += 1 }
            try checkInvariants("killed in \(function)")
        }
        // (b) At random instants after login, spread over a whole rotation.
        for attempt in 0..<16 {
            if try killRotate(plan: "", after: Double(attempt) * 0.006) { killed += 1 }
            try checkInvariants("random kill \(attempt)")
        }
        #expect(killed >= 8)

        // Rotating again completes the job: a new current key, all old ciphertexts fine.
        try "".write(toFile: planPath, atomically: true, encoding: .utf8)
        let final = try plugin.rotate()
        #expect(try plugin.keys().current.map(\.key_id) == [final])
        _ = try plugin.waitForKey(final, client: client)
        try checkInvariants("final")
    }

    @Test("staged rotation across two copies of a SoftHSM token (two control-plane nodes): no node ever fails to decrypt")
    func stagedAcrossCopies() throws {
        let nodeA = try PluginProcess(name: "node-a")
        try nodeA.start()
        let a = try nodeA.client()
        let oldKey = nodeA.initialKeyID
        // Stage on node A: the new key is pending, the current key does not change; staging again is idempotent.
        let staged = try nodeA.run(["rotate", "--stage"] + nodeA.tokenArguments)
        #expect(staged.status == 0)
        let stagedID = staged.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try nodeA.run(["rotate", "--stage"] + nodeA.tokenArguments).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == stagedID)
        let listing = try nodeA.keys()
        #expect(listing.keys.first { $0.key_id == stagedID }?.state == "pending")
        #expect(listing.current.map(\.key_id) == [oldKey])
        usleep(2_500_000)
        #expect(try a.status().keyID == oldKey)

        // Copy the token to node B (same label and PIN), as an admin would before promoting.
        let nodeB = try PluginProcess(name: "node-b", initialize: false)
        try FileManager.default.removeItem(at: nodeB.hsm.tokenDirectory)
        try FileManager.default.copyItem(at: nodeA.hsm.tokenDirectory, to: nodeB.hsm.tokenDirectory)
        let serveB = Process()
        serveB.executableURL = URL(fileURLWithPath: PluginProcess.executable)
        serveB.arguments = ["serve", "--listen", nodeB.listen, "--token-label", nodeA.tokenLabel, "--pin-file", nodeA.pinFile, "--http-listen", "off"]
        serveB.environment = nodeB.environment
        serveB.standardError = FileHandle.nullDevice
        try serveB.run()
        ChildProcesses.register(serveB.processIdentifier)
        defer { serveB.terminate(); serveB.waitUntilExit() }
        var bClient: KMSClient?
        for _ in 0..<100 where bClient == nil {
            if let client = try? KMSClient(socketPath: nodeB.socketPath), (try? client.status().healthz) == "ok" { bClient = client }
            usleep(50_000)
        }
        let b = try #require(bClient)
        #expect(try b.status().keyID == oldKey)

        // Promote on node A first: A wraps under the new key, and B (where it is still pending) decrypts it.
        #expect(try nodeA.rotate() == stagedID)
        _ = try nodeA.waitForKey(stagedID, client: a)
        let seed = randomBytes(32)
        let fromA = try a.encrypt(seed)
        #expect(fromA.keyID == stagedID)
        #expect(try b.decrypt(fromA.ciphertext, keyID: stagedID) == seed)
        let fromB = try b.encrypt(seed)
        #expect(fromB.keyID == oldKey)
        #expect(try a.decrypt(fromB.ciphertext, keyID: oldKey) == seed)

        // Then on node B's copy: same key_id everywhere.
        let promoteB = try Command.run(PluginProcess.executable, ["rotate", "--token-label", nodeA.tokenLabel, "--pin-file", nodeA.pinFile],
                                       environment: nodeB.environment)
        #expect(promoteB.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == stagedID)
        _ = try nodeA.waitForKey(stagedID, client: b)
    }

    @Test("--status-version v2beta1 for 1.27-1.28 apiservers")
    func v2beta1() throws {
        let plugin = try PluginProcess(name: "beta")
        try plugin.start(["--status-version", "v2beta1"])
        #expect(try plugin.client().status().version == "v2beta1")
    }
}

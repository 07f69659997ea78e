import Foundation
import GRPCTransport
import KMSProto
import Testing
import TestSupport

/// scripts/three-node-demo.sh follows deploy/kubeadm/README.md's multi-node procedure on one machine (three node
/// folders, three plugins on three sockets, the token copied as documented). Between its steps this test talks KMS
/// to every plugin: the nodes share the root keys, each decrypts what the others wrapped, the staged rotation
/// converges with no node ever meeting a key it lacks, and a node without the copy stops instead of creating a key.
@Suite("three control-plane nodes on one machine")
struct ThreeNodeDemoTests {
    struct Demo {
        let dir: URL

        init() throws { dir = try TemporaryDirectory.make(prefix: "3node") }

        func run(_ steps: String...) throws -> Command.Result {
            var env = ProcessInfo.processInfo.environment
            env["P11KMS_BIN"] = PluginProcess.executable
            return try Command.run("/bin/bash", [Repository.url("scripts/three-node-demo.sh").path, dir.path] + steps, environment: env)
        }

        func node(_ n: Int) -> URL { dir.appendingPathComponent("node\(n)") }
        func socket(_ n: Int) -> String { node(n).appendingPathComponent("run/kms/p11kms.sock").path }
        func pinFile(_ n: Int) -> String { node(n).appendingPathComponent("etc/p11kms/pin").path }
        func conf(_ n: Int) -> String { node(n).appendingPathComponent("etc/p11kms/softhsm2.conf").path }
        func tokens(_ n: Int) -> String { node(n).appendingPathComponent("var/lib/p11kms/softhsm/tokens").path }
        func client(_ n: Int) throws -> KMSClient { try KMSClient(socketPath: socket(n)) }
        func currentKey(_ n: Int) throws -> String { try client(n).status().keyID }

        /// `p11kms serve` on node `n` as the static pod runs it, straight (as if the init container were skipped).
        func serveDirectly(_ n: Int) throws -> (Command.Result, TimeInterval) {
            var env = ProcessInfo.processInfo.environment
            env["SOFTHSM2_CONF"] = nil
            let started = Date()
            let result = try Command.run(PluginProcess.executable, [
                "serve", "--listen=unix://\(socket(n))", "--module=\(Canonical.softHSMModule)", "--token-label=\(Canonical.tokenLabel)",
                "--pin-file=\(pinFile(n))", "--softhsm-conf=\(conf(n))", "--http-listen=off",
            ], environment: env)
            return (result, Date().timeIntervalSince(started))
        }
    }

    struct Wrapped {
        let plaintext: [UInt8]
        let response: V2_EncryptResponse
    }

    /// Every node wraps a data key; every node unwraps every node's.
    static func crossCheck(_ demo: Demo, nodes: [Int], expectKey: (Int) -> String) throws -> [Wrapped] {
        var wrapped: [Wrapped] = []
        for n in nodes {
            let plaintext = (0..<32).map { _ in UInt8.random(in: 0...255) }
            let response = try demo.client(n).encrypt(plaintext, uid: "node\(n)")
            #expect(response.keyID == expectKey(n), "node\(n) wrapped under \(response.keyID)")
            wrapped.append(Wrapped(plaintext: plaintext, response: response))
        }
        try expectEveryNodeUnwraps(wrapped, demo: demo, nodes: nodes)
        return wrapped
    }

    static func expectEveryNodeUnwraps(_ wrapped: [Wrapped], demo: Demo, nodes: [Int]) throws {
        for item in wrapped {
            for n in nodes {
                let plaintext = try demo.client(n).decrypt(item.response.ciphertext, keyID: item.response.keyID,
                                                           annotations: item.response.annotations)
                #expect(plaintext == item.plaintext, "node\(n) unwrapped another data key")
            }
        }
    }

    @Test func theDocumentedProcedureGivesThreeNodesOneSetOfKeysAndAStagedRotationConverges() throws {
        let demo = try Demo()
        defer {
            _ = try? demo.run("stop")
            try? FileManager.default.removeItem(at: demo.dir)
        }

        // First node: token and key; copies; the static pod on each node; `p11kms keys` agrees everywhere.
        let setup = try demo.run("first-node", "copy:2", "copy:3", "join:1", "join:2", "join:3", "verify")
        #expect(setup.status == 0, "\(setup.stderr)")
        try #require(setup.status == 0)
        let first = try #require(setup.stdout.split(separator: "\n").first.map(String.init))
        #expect(first.hasPrefix("p11kms-") && first.count == 39)
        #expect(setup.stderr.contains("every node lists the same key_ids"))
        for n in 1...3 { #expect(try demo.currentKey(n) == first, "node\(n)") }
        let before = try Self.crossCheck(demo, nodes: [1, 2, 3]) { _ in first }

        // A fourth node joins without the copy: the init container stops it with the instruction, nothing is created.
        let late = try demo.run("join:4")
        #expect(late.status != 0)
        #expect(late.stderr.contains("P11KMS_CREATE_TOKEN=no, so no token (and no root key) of this node's own is created"), "\(late.stderr)")
        #expect(late.stderr.contains("copy \(demo.pinFile(4)), "), "\(late.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: demo.tokens(4)).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: demo.socket(4)))
        // `p11kms serve` there fails fast too, naming what to copy: first the missing PIN file, then (PIN copied,
        // token directory not) the token directory and the SoftHSM config it read.
        let (noPIN, noPINSeconds) = try demo.serveDirectly(4)
        #expect(noPIN.status != 0 && noPINSeconds < 10)
        #expect(noPIN.stderr.contains("cannot read the PIN file \(demo.pinFile(4)): it does not exist"), "\(noPIN.stderr)")
        #expect(noPIN.stderr.contains("Several control-plane nodes"), "\(noPIN.stderr)")
        try FileManager.default.copyItem(atPath: demo.pinFile(1), toPath: demo.pinFile(4))
        let (noToken, noTokenSeconds) = try demo.serveDirectly(4)
        #expect(noToken.status == 1 && noTokenSeconds < 10)
        #expect(noToken.stderr.contains("SOFTHSM2_CONF=\(demo.conf(4)) (softhsm-conf, from flag), token directory \(demo.tokens(4))"), "\(noToken.stderr)")
        #expect(noToken.stderr.contains("copy \(demo.pinFile(4)) and the token directory \(demo.tokens(4)) from the node that holds it"), "\(noToken.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: demo.tokens(4)).isEmpty)

        // Staged rotation: stage on node1, copy its token to the running nodes 2 and 3; nothing switches yet.
        let stage = try demo.run("stage")
        #expect(stage.status == 0, "\(stage.stderr)")
        let staged = stage.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(staged.hasPrefix("p11kms-") && staged != first)
        let copies = try demo.run("copy-tokens:2", "copy-tokens:3")
        #expect(copies.status == 0, "\(copies.stderr)")
        for n in 1...3 { #expect(try demo.currentKey(n) == first, "node\(n) switched before its promotion") }

        // node1 promotes: it wraps under the staged key, and nodes 2 and 3, still on the old key, unwrap it (their
        // running plugins picked the pending key up from the copied token); node1 unwraps what they wrap.
        let promoteFirst = try demo.run("promote:1")
        #expect(promoteFirst.status == 0, "\(promoteFirst.stderr)")
        #expect(try demo.currentKey(1) == staged)
        #expect(try demo.currentKey(2) == first)
        let mixed = try Self.crossCheck(demo, nodes: [1, 2, 3]) { $0 == 1 ? staged : first }

        // The others promote: every node on the staged key, the same key list everywhere, every old wrap readable.
        let promoteRest = try demo.run("promote:2", "promote:3", "verify")
        #expect(promoteRest.status == 0, "\(promoteRest.stderr)")
        for n in 1...3 { #expect(try demo.currentKey(n) == staged, "node\(n)") }
        _ = try Self.crossCheck(demo, nodes: [1, 2, 3]) { _ in staged }
        try Self.expectEveryNodeUnwraps(before + mixed, demo: demo, nodes: [1, 2, 3])

        // Retire the old key on every node (each token copy is its own): it refuses everywhere at once, identically.
        let retire = try demo.run("retire:1=\(first)", "retire:2=\(first)", "retire:3=\(first)", "verify")
        #expect(retire.status == 0, "\(retire.stderr)")
        #expect(retire.stdout.components(separatedBy: "\(first) retired").count == 4, "\(retire.stdout)")
        for n in 1...3 {
            #expect(throws: GRPCStatus.self, "node\(n) still unwraps under the retired key") {
                _ = try demo.client(n).decrypt(before[0].response.ciphertext, keyID: first, annotations: before[0].response.annotations)
            }
        }
        try Self.expectEveryNodeUnwraps(mixed.filter { $0.response.keyID == staged }, demo: demo, nodes: [1, 2, 3])

        let stop = try demo.run("stop")
        #expect(stop.status == 0, "\(stop.stderr)")
        for n in 1...3 { #expect(!FileManager.default.fileExists(atPath: demo.socket(n)), "node\(n)'s socket is left") }
    }
}

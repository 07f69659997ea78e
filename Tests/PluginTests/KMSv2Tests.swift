import Foundation
import GRPCTransport
import KMSProto
import Testing
import TestSupport

/// One plugin shared by the read-only tests of this suite (each test makes its own requests).
let sharedPlugin: Result<PluginProcess, any Error> = Result {
    let plugin = try PluginProcess(name: "v2")
    try plugin.start(["--log-level", "debug"])
    return plugin
}

func randomBytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255) } }

func expectStatus(_ code: GRPCStatusCode, _ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        try body()
        Issue.record("expected \(code), the call succeeded", sourceLocation: sourceLocation)
    } catch let error as GRPCStatus {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected GRPCStatus \(code), got \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("KMS v2 over the unix socket")
struct KMSv2Tests {
    @Test("Status reports v2, ok and the key_id made by init")
    func status() throws {
        let plugin = try sharedPlugin.get()
        let status = try plugin.client().status()
        #expect(status.version == "v2")
        #expect(status.healthz == "ok")
        #expect(status.keyID == plugin.initialKeyID)
        #expect(!status.keyID.isEmpty && status.keyID.utf8.count <= 1024)
    }

    @Test("round trips for 1...512-byte plaintexts and the apiserver's 32-byte seed")
    func roundTrips() throws {
        let plugin = try sharedPlugin.get()
        let client = try plugin.client()
        for size in Array(1...512) + [32, 974] {
            let plaintext = randomBytes(size)
            let response = try client.encrypt(plaintext)
            #expect(response.keyID == plugin.initialKeyID)
            #expect(!response.ciphertext.isEmpty && response.ciphertext.count <= 1024)
            #expect(response.annotations.isEmpty)
            #expect(try client.decrypt(response.ciphertext, keyID: response.keyID) == plaintext)
        }
    }

    @Test("two encryptions of the same seed differ")
    func distinct() throws {
        let client = try sharedPlugin.get().client()
        let seed = randomBytes(32)
        #expect(try client.encrypt(seed).ciphertext != client.encrypt(seed).ciphertext)
    }

    @Test("empty, oversize, tampered, truncated, wrong key_id and wrong annotations are invalidArgument")
    func rejects() throws {
        let client = try sharedPlugin.get().client()
        expectStatus(.invalidArgument) { _ = try client.encrypt([]) }
        expectStatus(.invalidArgument) { _ = try client.encrypt(randomBytes(975)) }
        let seed = randomBytes(32)
        let good = try client.encrypt(seed)
        for index in 0..<good.ciphertext.count {
            var bad = good.ciphertext
            bad[index] ^= 0x80
            expectStatus(.invalidArgument) { _ = try client.decrypt(bad, keyID: good.keyID) }
        }
        for length in [0, 1, 4, 21, 40, good.ciphertext.count - 1] {
            expectStatus(.invalidArgument) { _ = try client.decrypt(good.ciphertext.prefix(length), keyID: good.keyID) }
        }
        expectStatus(.invalidArgument) { _ = try client.decrypt(good.ciphertext, keyID: "") }
        expectStatus(.invalidArgument) { _ = try client.decrypt(good.ciphertext, keyID: "p11kms-00000000000000000000000000000000") }
        expectStatus(.invalidArgument) { _ = try client.decrypt(good.ciphertext, keyID: String(repeating: "k", count: 1025)) }
        expectStatus(.invalidArgument) { _ = try client.decrypt(good.ciphertext, keyID: good.keyID, annotations: ["Not_A_Domain": Data([1])]) }
        expectStatus(.invalidArgument) { _ = try client.decrypt(good.ciphertext, keyID: good.keyID, annotations: ["version.example.com": Data([1])]) }
        expectStatus(.invalidArgument) { _ = try client.decrypt(good.ciphertext, keyID: good.keyID, annotations: ["big.example.com": Data(count: 40_000)]) }
        // Nothing changed: the good ciphertext still decrypts.
        #expect(try client.decrypt(good.ciphertext, keyID: good.keyID) == seed)
    }

    @Test("thousands of randomised malformed requests: none accepted, the server stays up")
    func fuzz() throws {
        let plugin = try sharedPlugin.get()
        let client = try plugin.client()
        let good = try client.encrypt(randomBytes(32))
        var accepted = 0
        for i in 0..<3000 {
            let kind = i % 4
            do {
                switch kind {
                case 0:
                    // Random bytes as a DecryptRequest.
                    _ = try client.raw(KMSv2Method.decrypt, randomBytes(Int.random(in: 0...200)))
                    accepted += 1
                case 1:
                    // A well-formed request with a mutated ciphertext (random flips, insertions or cuts).
                    var bytes = Array(good.ciphertext)
                    for _ in 0..<Int.random(in: 1...4) {
                        switch Int.random(in: 0...2) {
                        case 0: bytes[Int.random(in: 0..<bytes.count)] ^= UInt8.random(in: 1...255)
                        case 1: bytes.insert(UInt8.random(in: 0...255), at: Int.random(in: 0...bytes.count))
                        default: if bytes.count > 1 { bytes.remove(at: Int.random(in: 0..<bytes.count)) }
                        }
                    }
                    if bytes == Array(good.ciphertext) { continue }
                    _ = try client.decrypt(Data(bytes), keyID: good.keyID)
                    accepted += 1
                case 2:
                    // Random ciphertext of a plausible size.
                    _ = try client.decrypt(Data(randomBytes(Int.random(in: 0...1100))), keyID: good.keyID)
                    accepted += 1
                default:
                    // Random bytes to Encrypt: either malformed or a (valid) random plaintext; must never crash.
                    _ = try? client.raw(KMSv2Method.encrypt, randomBytes(Int.random(in: 0...64)))
                }
            } catch let error as GRPCStatus {
                #expect(error.code == .invalidArgument, "request \(i): \(error)")
            }
        }
        #expect(accepted == 0)
        #expect(try client.status().healthz == "ok")
        #expect(plugin.process?.isRunning == true)
    }

    @Test("16 concurrent clients with hundreds of round trips each, all correct")
    func concurrentClients() async throws {
        let plugin = try sharedPlugin.get()
        let failures = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<16 {
                group.addTask {
                    await Blocking.run {
                        guard let client = try? plugin.client() else { return 300 }
                        var bad = 0
                        for _ in 0..<300 {
                            let seed = randomBytes(32)
                            guard let response = try? client.encrypt(seed),
                                  let opened = try? client.decrypt(response.ciphertext, keyID: response.keyID),
                                  opened == seed else { bad += 1; continue }
                        }
                        return bad
                    }
                }
            }
            return await group.reduce(0, +)
        }
        #expect(failures == 0)
    }

    @Test("unknown methods are unimplemented")
    func unknownMethod() throws {
        let client = try sharedPlugin.get().client()
        #expect(throws: GRPCStatus.self) { _ = try client.raw("/v2.KeyManagementService/Nope", []) }
        do { _ = try client.raw("/v2.KeyManagementService/Nope", []) } catch { #expect(error.code == .unimplemented) }
    }

    @Test("the socket is 0600 and the PIN is not on the command line or in the log")
    func secrets() throws {
        let plugin = try sharedPlugin.get()
        var st = stat()
        #expect(lstat(plugin.socketPath, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        let pid = try #require(plugin.process?.processIdentifier)
        let cmdline = try String(decoding: Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")), as: UTF8.self)
        #expect(!cmdline.contains(SoftHSMFixture.userPIN))
        #expect(cmdline.contains("--pin-file"))
        // Debug logging is on for this plugin: request lines are there, the PIN and plaintexts are not.
        let client = try plugin.client()
        let marker = Array("PLAINTEXT-MARKER-0123456789abcdef".utf8)
        let response = try client.encrypt(marker)
        _ = try client.decrypt(response.ciphertext, keyID: response.keyID)
        usleep(100_000)
        let log = plugin.log
        #expect(log.contains("encrypt"))
        #expect(!log.contains(SoftHSMFixture.userPIN))
        #expect(!log.contains("PLAINTEXT-MARKER"))
        #expect(!log.contains(response.ciphertext.map { String(format: "%02x", $0) }.joined()))
    }
}

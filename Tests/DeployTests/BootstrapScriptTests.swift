import Foundation
import Testing
import TestSupport

/// deploy/bootstrap/init-token.sh, run for real in a temporary root: it creates SoftHSM's config, the token, a
/// 0400 PIN file and the first root key; a second run changes nothing; no PIN is ever printed.
@Suite("bootstrap script")
struct BootstrapScriptTests {
    static let script = Repository.url("deploy/bootstrap/init-token.sh").path

    /// A temporary /etc/p11kms and /var/lib/p11kms for one test.
    struct Root {
        let folder: URL
        var etc: String { folder.appendingPathComponent("etc/p11kms").path }
        var state: String { folder.appendingPathComponent("var/lib/p11kms").path }
        var tokens: String { state + "/softhsm/tokens" }
        var pinFile: String { etc + "/pin" }
        var soPINFile: String { etc + "/so-pin" }
        var conf: String { etc + "/softhsm2.conf" }

        init() throws { folder = try TemporaryDirectory.make(prefix: "bootstrap") }

        var environment: [String: String] {
            var env = ProcessInfo.processInfo.environment
            // A caller's SoftHSM config or PIN must not leak into the script's work.
            env["SOFTHSM2_CONF"] = "/nonexistent/softhsm2.conf"
            env["P11KMS_PIN"] = nil
            env["P11KMS_ETC"] = etc
            env["P11KMS_STATE"] = state
            env["P11KMS_BIN"] = PluginProcess.executable
            env["P11KMS_MODULE"] = SoftHSMFixture.modulePath
            return env
        }

        func run(_ extra: [String: String] = [:]) throws -> Command.Result {
            try Command.run("/bin/bash", [BootstrapScriptTests.script], environment: environment.merging(extra) { _, b in b })
        }

        func mode(_ path: String) -> Int? {
            (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int
        }
    }

    @Test func createsTokenPINAndKeyOnceAndNeverPrintsThePIN() throws {
        let root = try Root()
        defer { try? FileManager.default.removeItem(at: root.folder) }

        let first = try root.run()
        #expect(first.status == 0, "first run: \(first.stderr)")
        let keyID = first.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(keyID.hasPrefix("p11kms-") && keyID.count == 39, "stdout is the key_id: \(first.stdout)")
        #expect(first.stderr.contains("created token 'p11kms'"))

        #expect(root.mode(root.pinFile) == 0o400)
        #expect(root.mode(root.soPINFile) == 0o400)
        #expect(root.mode(root.etc) == 0o700)
        let pin = try String(contentsOfFile: root.pinFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let soPIN = try String(contentsOfFile: root.soPINFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(pin.count == 32 && soPIN.count == 32 && pin != soPIN)
        let conf = try String(contentsOfFile: root.conf, encoding: .utf8)
        #expect(conf.contains("directories.tokendir = \(root.tokens)\n"))

        let second = try root.run()
        #expect(second.status == 0, "second run: \(second.stderr)")
        #expect(second.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == keyID, "the second run keeps the key")
        #expect(second.stderr.contains("token 'p11kms' exists"))
        #expect(!second.stderr.contains("wrote"), "the second run writes nothing: \(second.stderr)")
        #expect(try String(contentsOfFile: root.pinFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == pin)
        #expect(root.mode(root.pinFile) == 0o400)

        for output in [first.stdout, first.stderr, second.stdout, second.stderr] {
            #expect(!output.contains(pin) && !output.contains(soPIN), "a PIN was printed")
        }

        // One token in the folder, holding exactly one root key: the current one, usable with the PIN file.
        let folders = try FileManager.default.contentsOfDirectory(atPath: root.tokens)
        #expect(folders.count == 1, "token folders: \(folders)")
        var env = ProcessInfo.processInfo.environment
        env["SOFTHSM2_CONF"] = root.conf
        let keys = try Command.run(PluginProcess.executable,
            ["keys", "--module", SoftHSMFixture.modulePath, "--token-label", Canonical.tokenLabel, "--pin-file", root.pinFile, "--format", "json"],
            environment: env)
        #expect(keys.status == 0, "\(keys.stderr)")
        let listed = try JSONSerialization.jsonObject(with: Data(keys.stdout.utf8)) as? [String: Any]
        let entries = listed?["keys"] as? [[String: Any]] ?? []
        #expect(entries.count == 1)
        #expect(entries.first?["key_id"] as? String == keyID)
        #expect(entries.first?["state"] as? String == "current")
    }

    @Test func aTokenWhosePINFileIsGoneIsNotGivenANewPIN() throws {
        let root = try Root()
        defer { try? FileManager.default.removeItem(at: root.folder) }
        let first = try root.run()
        #expect(first.status == 0, "\(first.stderr)")
        try FileManager.default.removeItem(atPath: root.pinFile)

        let second = try root.run()
        #expect(second.status != 0)
        #expect(second.stderr.contains("PIN file") && second.stderr.contains("missing"), "\(second.stderr)")
        #expect(!FileManager.default.fileExists(atPath: root.pinFile), "a new random PIN would not open the old token")
    }

    /// Control-plane nodes after the first run with P11KMS_CREATE_TOKEN=no: without a copy of the first node's
    /// token they stop, rather than create a token (and a root key) of their own.
    @Test func withoutCreateTokenAMissingTokenIsAnErrorAndNothingIsWritten() throws {
        let root = try Root()
        defer { try? FileManager.default.removeItem(at: root.folder) }
        let refused = try root.run(["P11KMS_CREATE_TOKEN": "no"])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("P11KMS_CREATE_TOKEN=no"), "\(refused.stderr)")
        // It names what to copy, from where, and where that is documented.
        #expect(refused.stderr.contains("copy \(root.pinFile), \(root.soPINFile) and the token directory \(root.tokens) from the control-plane node that holds the token"),
                "\(refused.stderr)")
        #expect(refused.stderr.contains("deploy/kubeadm/README.md, \"Several control-plane nodes\""), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: root.pinFile))
        #expect(!FileManager.default.fileExists(atPath: root.soPINFile))
        #expect(try FileManager.default.contentsOfDirectory(atPath: root.tokens).isEmpty)

        // With a token present (here: made by a first run), "no" is the same as an ordinary second run.
        let first = try root.run()
        #expect(first.status == 0, "\(first.stderr)")
        let again = try root.run(["P11KMS_CREATE_TOKEN": "no"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(again.stdout == first.stdout)
    }

    @Test func thePINsNeverAppearOnACommandLine() throws {
        // Every PIN option in the script takes the PIN from the environment (pkcs11-tool's env:NAME) or a file.
        let text = try Repository.text("deploy/bootstrap/init-token.sh")
        let lines = text.split(separator: "\n").filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("#") }
        for line in lines {
            for option in ["--pin ", "--so-pin "] {
                var rest = Substring(line)
                while let range = rest.range(of: option) {
                    rest = rest[range.upperBound...]
                    #expect(rest.hasPrefix("env:"), "\(option)without env: in: \(line)")
                }
            }
            #expect(!line.contains("--pin=") && !line.contains("--so-pin="), "\(line)")
            #expect(!line.contains("softhsm2-util"), "softhsm2-util takes PINs only as arguments: \(line)")
        }
        #expect(text.contains("--pin-file \"$pin_file\""))
    }
}

import Foundation
import Testing
import TestSupport

/// deploy/bootstrap/init-token.sh with a PKCS#11 module that is not SoftHSM: it never initialises a slot and never
/// writes a PIN or a SoftHSM config; it only runs `p11kms init` against a token that exists. The module here is the
/// fault-injecting module (libFaultPKCS11.so) forwarding to a private SoftHSM installation, which offers a free,
/// uninitialised slot exactly like an unformatted vendor slot would.
@Suite("bootstrap script: modules other than SoftHSM")
struct BootstrapVendorModuleTests {
    struct Vendor {
        let root: BootstrapScriptTests.Root
        let hsm: SoftHSMFixture
        let plan: String

        init() throws {
            root = try BootstrapScriptTests.Root()
            hsm = try SoftHSMFixture(name: "vendor")
            plan = hsm.root.appendingPathComponent("plan").path
            _ = FileManager.default.createFile(atPath: plan, contents: Data())
        }

        func run() throws -> Command.Result {
            try root.run(["P11KMS_MODULE": FaultModule.path, "SOFTHSM2_CONF": hsm.configPath,
                          "FAULTPKCS11_MODULE": SoftHSMFixture.modulePath, "FAULTPKCS11_CONTROL": plan])
        }

        func cleanUp() {
            try? FileManager.default.removeItem(at: root.folder)
            try? FileManager.default.removeItem(at: hsm.root)
        }

        /// Token folders SoftHSM holds (an initialised slot is one folder).
        func tokenFolders() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: hsm.tokenDirectory.path) }
    }

    @Test func aMissingTokenIsNotCreatedAndNothingIsWritten() throws {
        let vendor = try Vendor()
        defer { vendor.cleanUp() }
        let result = try vendor.run()
        #expect(result.status != 0)
        #expect(result.stderr.contains("is not SoftHSM: creating no token"), "\(result.stderr)")
        #expect(result.stderr.contains("no token labelled 'p11kms'") && result.stderr.contains("vendor's tools"), "\(result.stderr)")
        #expect(result.stdout.isEmpty)
        #expect(try vendor.tokenFolders().isEmpty, "the free slot was initialised")
        for path in [vendor.root.pinFile, vendor.root.soPINFile, vendor.root.conf, vendor.root.tokens] {
            #expect(!FileManager.default.fileExists(atPath: path), "\(path) was written")
        }
    }

    @Test func anExistingTokenGetsItsFirstRootKeyOnceAndNoPINIsWritten() throws {
        let vendor = try Vendor()
        defer { vendor.cleanUp() }
        try vendor.hsm.createToken(label: Canonical.tokenLabel)
        let folders = try vendor.tokenFolders()

        // The token exists but its PIN file does not: the script says so and makes up no PIN.
        let noPIN = try vendor.run()
        #expect(noPIN.status != 0)
        #expect(noPIN.stderr.contains("the PIN file \(vendor.root.pinFile) is missing"), "\(noPIN.stderr)")
        #expect(!FileManager.default.fileExists(atPath: vendor.root.pinFile))

        try FileManager.default.createDirectory(atPath: vendor.root.etc, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: vendor.root.pinFile, contents: Data((SoftHSMFixture.userPIN + "\n").utf8),
                                           attributes: [.posixPermissions: 0o400])
        let first = try vendor.run()
        #expect(first.status == 0, "\(first.stderr)")
        let keyID = first.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(keyID.hasPrefix("p11kms-") && keyID.count == 39, "\(first.stdout)")
        let second = try vendor.run()
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stdout == first.stdout, "the second run keeps the key")

        #expect(try vendor.tokenFolders() == folders, "no slot was initialised")
        for path in [vendor.root.soPINFile, vendor.root.conf, vendor.root.tokens] {
            #expect(!FileManager.default.fileExists(atPath: path), "\(path) was written")
        }
        #expect(try String(contentsOfFile: vendor.root.pinFile, encoding: .utf8) == SoftHSMFixture.userPIN + "\n")
        for output in [first.stdout, first.stderr, second.stdout, second.stderr] {
            #expect(!output.contains(SoftHSMFixture.userPIN))
        }
        // The key is in the token, current.
        let keys = try Command.run(PluginProcess.executable,
            ["keys", "--module", SoftHSMFixture.modulePath, "--token-label", Canonical.tokenLabel, "--pin-file", vendor.root.pinFile,
             "--softhsm-conf", vendor.hsm.configPath])
        #expect(keys.status == 0, "\(keys.stderr)")
        #expect(keys.stdout.split(separator: "\n").contains { $0.hasPrefix(keyID) && $0.contains(" current ") }, "\(keys.stdout)")
    }
}

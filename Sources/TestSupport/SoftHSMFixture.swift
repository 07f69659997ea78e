import Foundation
import Synchronization

/// A private SoftHSM2 installation for one test process: its own `SOFTHSM2_CONF` and token directory under a
/// temporary folder, set in this process's environment before the module is first loaded. Tokens are created with
/// `softhsm2-util` and found by label.
public final class SoftHSMFixture: Sendable {
    public static let modulePath = ProcessInfo.processInfo.environment["P11KMS_TEST_MODULE"] ?? "/usr/lib/softhsm/libsofthsm2.so"
    public static let userPIN = "4321-test-pin"
    public static let soPIN = "1234-so-pin"

    public let root: URL
    public let tokenDirectory: URL
    public let configPath: String

    /// The fixture shared by the in-process tests of this process (PKCS#11 state is process-wide). SoftHSM reads
    /// its token directory only in `C_Initialize`, so a pool of tokens is created before the module is first loaded
    /// and each test takes one of its own with `takeToken()`.
    public static let shared: SoftHSMFixture = {
        let fixture = try! SoftHSMFixture(name: "inproc")
        setenv("SOFTHSM2_CONF", fixture.configPath, 1)
        for i in 0..<SoftHSMFixture.poolSize {
            try! fixture.createToken(label: "pool-\(i)")
        }
        return fixture
    }()

    static let poolSize = 64
    private static let nextPoolToken = LockedCounter()

    /// The label of a pooled token no other test uses (only on `shared`).
    public func takeToken() -> String {
        let index = SoftHSMFixture.nextPoolToken.next()
        precondition(index < SoftHSMFixture.poolSize, "the SoftHSM token pool is exhausted; raise poolSize")
        return "pool-\(index)"
    }

    /// A fresh SoftHSM directory and config; does not touch this process's environment.
    public init(name: String) throws {
        root = try TemporaryDirectory.make(prefix: "softhsm-\(name)")
        tokenDirectory = root.appendingPathComponent("tokens")
        try FileManager.default.createDirectory(at: tokenDirectory, withIntermediateDirectories: true)
        configPath = root.appendingPathComponent("softhsm2.conf").path
        let conf = """
        directories.tokendir = \(tokenDirectory.path)
        objectstore.backend = file
        log.level = ERROR
        slots.removable = false

        """
        try conf.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    /// Environment for child processes using this installation.
    public var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["SOFTHSM2_CONF"] = configPath
        return env
    }

    /// Creates and initialises a token with `label` and the test PINs.
    public func createToken(label: String) throws {
        let result = try Command.run("/usr/bin/softhsm2-util",
            ["--init-token", "--free", "--label", label, "--so-pin", SoftHSMFixture.soPIN, "--pin", SoftHSMFixture.userPIN],
            environment: environment)
        guard result.status == 0 else {
            throw FixtureError("softhsm2-util --init-token failed (\(result.status)): \(result.stderr)")
        }
    }

    /// The folder SoftHSM keeps the token labelled `label` in (its `token.object` holds the space-padded label).
    public func tokenFolder(label: String) -> URL? {
        let padded = Data((label + " ").utf8)
        let folders = (try? FileManager.default.contentsOfDirectory(at: tokenDirectory, includingPropertiesForKeys: nil)) ?? []
        return folders.first { folder in
            guard let data = try? Data(contentsOf: folder.appendingPathComponent("token.object")) else { return false }
            return data.range(of: padded) != nil
        }
    }

    /// A unique token label for one test.
    public static func uniqueLabel(_ base: String) -> String {
        "\(base)-\(UInt32.random(in: 0...UInt32.max))"
    }

    /// Writes the user PIN to a 0600 file and returns its path.
    public func writePINFile(_ pin: String = SoftHSMFixture.userPIN) throws -> String {
        let path = root.appendingPathComponent("pin-\(UInt32.random(in: 0...UInt32.max))").path
        _ = FileManager.default.createFile(atPath: path, contents: Data((pin + "\n").utf8), attributes: [.posixPermissions: 0o600])
        return path
    }
}

final class LockedCounter: Sendable {
    private let value = Mutex(0)
    func next() -> Int { value.withLock { value in defer { value += 1 }; return value } }
}

public struct FixtureError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public enum TemporaryDirectory {
    /// A new directory under $TMPDIR (or /tmp) that the caller may delete.
    public static func make(prefix: String) throws -> URL {
        let base = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        var template = Array("\(base)/p11kms-\(prefix)-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw FixtureError("mkdtemp failed")
        }
        return URL(fileURLWithPath: String(cString: made))
    }
}

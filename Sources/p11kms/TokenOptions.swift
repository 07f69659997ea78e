import ArgumentParser
import Foundation
import PKCS11

/// The flags that name the token, shared by every command that opens it, plus `--config`. Each has an
/// environment-variable twin and a config-file key; the PIN itself is read from a file or from P11KMS_PIN, never
/// from an argument or the config file.
struct TokenOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Config file, YAML or JSON, keys named like the long flags (env P11KMS_CONFIG).", valueName: "file"))
    var config: String?

    @Option(help: ArgumentHelp("Path of the PKCS#11 module (env P11KMS_MODULE; default SoftHSM2's).", valueName: "path"))
    var module: String?

    @Option(help: ArgumentHelp("Label of the token that holds the root keys (env P11KMS_TOKEN_LABEL).", valueName: "label"))
    var tokenLabel: String?

    @Option(help: ArgumentHelp("File holding the user PIN (env P11KMS_PIN_FILE); or set P11KMS_PIN.", valueName: "file"))
    var pinFile: String?

    @Option(help: ArgumentHelp("Most PKCS#11 sessions open at once (env P11KMS_MAX_SESSIONS; default 8).", valueName: "n"))
    var maxSessions: String?

    @Option(help: ArgumentHelp("Directory for p11kms's own state, e.g. the record of a rejected PIN (env P11KMS_STATE_DIR; default /var/lib/p11kms/state).", valueName: "dir"))
    var stateDir: String?

    func resolver() throws -> SettingsResolver {
        try SettingsResolver(configPath: config)
    }

    func resolved(_ settings: SettingsResolver? = nil) throws -> TokenConfiguration {
        try resolvedToken(settings).configuration
    }

    /// The token's configuration, the state directory and where the PIN came from (for messages).
    func resolvedToken(_ settings: SettingsResolver? = nil) throws -> ResolvedToken {
        let settings = try settings ?? resolver()
        guard let module = settings.resolve("module", flag: self.module).value else { throw ValidationError("--module is required") }
        guard let label = settings.resolve("token-label", flag: tokenLabel).value, !label.isEmpty else {
            throw ValidationError("--token-label (or P11KMS_TOKEN_LABEL, or token-label in the config file) is required")
        }
        let pinFile = settings.resolve("pin-file", flag: pinFile).value
        let pin = try TokenOptions.readPIN(file: pinFile, environment: settings.environment)
        let sessions = try settings.int("max-sessions", flag: maxSessions, range: 1...1024)
        guard let stateDirectory = settings.resolve("state-dir", flag: stateDir).value, !stateDirectory.isEmpty else {
            throw ValidationError("state-dir must name a directory, e.g. state-dir: /var/lib/p11kms/state")
        }
        return ResolvedToken(
            configuration: TokenConfiguration(modulePath: module, tokenLabel: label, pin: pin, maxSessions: sessions),
            stateDirectory: stateDirectory, pinSource: pinFile.map { "the PIN file \($0)" } ?? "P11KMS_PIN")
    }

    /// The PIN from the file (trailing newline removed) or from P11KMS_PIN. Never logged or echoed. P11KMS_PIN is
    /// removed from the environment (and its text overwritten, see `PINEnvironment.scrub`) once read, whichever
    /// source is used.
    static func readPIN(file: String?, environment: [String: String]) throws -> [UInt8] {
        defer { PINEnvironment.scrub() }
        if let file {
            guard var data = FileManager.default.contents(atPath: file) else {
                throw ValidationError("cannot read the PIN file \(file)")
            }
            var bytes = Array(data)
            data.resetBytes(in: 0..<data.count)
            while let last = bytes.last, last == 0x0a || last == 0x0d { bytes.removeLast() }
            guard !bytes.isEmpty else { throw ValidationError("the PIN file \(file) is empty") }
            if let attributes = try? FileManager.default.attributesOfItem(atPath: file),
               let mode = attributes[.posixPermissions] as? Int, mode & 0o077 != 0 {
                FileHandle.standardError.write(Data("p11kms: warning: the PIN file \(file) is readable by group or others (mode \(String(mode, radix: 8)))\n".utf8))
            }
            return bytes
        }
        if let pin = environment["P11KMS_PIN"], !pin.isEmpty {
            return Array(pin.utf8)
        }
        throw ValidationError("no PIN: use --pin-file FILE (or P11KMS_PIN_FILE, or pin-file in the config file) or set P11KMS_PIN")
    }
}

struct ResolvedToken {
    let configuration: TokenConfiguration
    let stateDirectory: String
    let pinSource: String
}

/// Prints a one-line error to stderr and exits with `code`.
func fail(_ message: String, code: Int32 = 1) -> Never {
    FileHandle.standardError.write(Data("p11kms: \(message)\n".utf8))
    exit(code)
}

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

    @Option(help: ArgumentHelp("SoftHSM2's config file, exported as SOFTHSM2_CONF before the module is loaded (env P11KMS_SOFTHSM_CONF).", valueName: "file"))
    var softhsmConf: String?

    /// The settings, with the `softhsm-conf` setting (when given) exported as SOFTHSM2_CONF: every command resolves
    /// its settings first, before any thread is started and before the PKCS#11 module is loaded.
    func resolver() throws -> SettingsResolver {
        let settings = try SettingsResolver(configPath: config)
        if let conf = settings.resolve("softhsm-conf", flag: softhsmConf).value, !conf.isEmpty {
            setenv("SOFTHSM2_CONF", conf, 1)
        }
        return settings
    }

    func resolved(_ settings: SettingsResolver? = nil) throws -> TokenConfiguration {
        try resolvedToken(settings).configuration
    }

    /// The token's configuration, the state directory and where the PIN came from (for messages).
    func resolvedToken(_ settings: SettingsResolver? = nil) throws -> ResolvedToken {
        let settings = try settings ?? resolver()
        let conf = settings.resolve("softhsm-conf", flag: softhsmConf)
        if let path = conf.value, !path.isEmpty, !FileManager.default.isReadableFile(atPath: path) {
            throw ValidationError("cannot read the SoftHSM config file \(path) (softhsm-conf, from \(conf.source))")
        }
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
                let missing = !FileManager.default.fileExists(atPath: file)
                throw ValidationError("cannot read the PIN file \(file)" + (missing
                    ? ": it does not exist. If this node joins control-plane nodes that already have the token, copy the "
                        + "PIN file and the token directory from the node that holds it "
                        + "(deploy/kubeadm/README.md, \"Several control-plane nodes\")"
                    : ""))
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

extension TokenOptions {
    /// What an error opening the token should add when SoftHSM is involved (the module is SoftHSM's or
    /// SOFTHSM2_CONF is set): the SOFTHSM2_CONF it read and the token directory in it; for a missing token, what a
    /// control-plane node has to copy from the node that holds the token. Empty otherwise.
    func openingHint(_ error: Error, modulePath: String, settings: SettingsResolver) -> String {
        let exported = getenv("SOFTHSM2_CONF").map { String(cString: $0) }
        guard modulePath.lowercased().contains("softhsm") || exported != nil else { return "" }
        var hint: String
        let tokenDirectory: String?
        if let exported, !exported.isEmpty {
            let setting = settings.resolve("softhsm-conf", flag: softhsmConf)
            let origin = setting.value == nil ? "environment SOFTHSM2_CONF" : "softhsm-conf, from \(setting.source)"
            tokenDirectory = TokenOptions.tokenDirectory(inSoftHSMConf: exported)
            hint = "; SoftHSM read SOFTHSM2_CONF=\(exported) (\(origin))"
            if !FileManager.default.isReadableFile(atPath: exported) {
                hint += ", which cannot be read"
            } else if let tokenDirectory {
                hint += ", token directory \(tokenDirectory)"
            }
        } else {
            tokenDirectory = nil
            hint = "; SOFTHSM2_CONF is not set, so SoftHSM read its built-in default (/etc/softhsm/softhsm2.conf): "
                + "set softhsm-conf (--softhsm-conf, P11KMS_SOFTHSM_CONF or softhsm-conf in the config file)"
        }
        if let error = error as? PKCS11Error, case .tokenNotFound = error.kind {
            let pinFile = settings.resolve("pin-file", flag: pinFile).value ?? "the PIN file"
            hint += ". If this node joins control-plane nodes that already have the token, copy \(pinFile) and the token "
                + "directory \(tokenDirectory ?? "(directories.tokendir in SOFTHSM2_CONF)") from the node that holds it "
                + "(deploy/kubeadm/README.md, \"Several control-plane nodes\"); only the first node creates a token "
                + "(deploy/bootstrap/init-token.sh with P11KMS_CREATE_TOKEN=yes)"
        }
        return hint
    }

    /// `directories.tokendir` of a SoftHSM2 config file, if it can be read.
    static func tokenDirectory(inSoftHSMConf path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            if parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == "directories.tokendir" {
                return parts[1].trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }
}

/// Prints a one-line error to stderr and exits with `code`.
func fail(_ message: String, code: Int32 = 1) -> Never {
    FileHandle.standardError.write(Data("p11kms: \(message)\n".utf8))
    exit(code)
}

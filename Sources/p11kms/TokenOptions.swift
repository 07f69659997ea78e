import ArgumentParser
import Foundation
import PKCS11

/// The flags that name the token, shared by every command that opens it. Each has an environment-variable twin;
/// the PIN itself is read from a file or from P11KMS_PIN, never from an argument.
struct TokenOptions: ParsableArguments {
    static let defaultModule = "/usr/lib/softhsm/libsofthsm2.so"

    @Option(help: ArgumentHelp("Path of the PKCS#11 module (env P11KMS_MODULE).", valueName: "path"))
    var module: String?

    @Option(help: ArgumentHelp("Label of the token that holds the root keys (env P11KMS_TOKEN_LABEL).", valueName: "label"))
    var tokenLabel: String?

    @Option(help: ArgumentHelp("File holding the user PIN (env P11KMS_PIN_FILE); or set P11KMS_PIN.", valueName: "file"))
    var pinFile: String?

    @Option(help: ArgumentHelp("Most PKCS#11 sessions open at once (env P11KMS_MAX_SESSIONS).", valueName: "n"))
    var maxSessions: Int?

    func resolved(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> TokenConfiguration {
        let module = self.module ?? environment["P11KMS_MODULE"] ?? TokenOptions.defaultModule
        guard let label = tokenLabel ?? environment["P11KMS_TOKEN_LABEL"], !label.isEmpty else {
            throw ValidationError("--token-label (or P11KMS_TOKEN_LABEL) is required")
        }
        let pin = try TokenOptions.readPIN(file: pinFile ?? environment["P11KMS_PIN_FILE"], environment: environment)
        let sessions = maxSessions ?? environment["P11KMS_MAX_SESSIONS"].flatMap(Int.init) ?? 8
        return TokenConfiguration(modulePath: module, tokenLabel: label, pin: pin, maxSessions: sessions)
    }

    /// The PIN from the file (trailing newline removed) or from P11KMS_PIN. Never logged or echoed.
    static func readPIN(file: String?, environment: [String: String]) throws -> [UInt8] {
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ValidationError("cannot read the PIN file \(file)")
            }
            var bytes = Array(data)
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
        throw ValidationError("no PIN: use --pin-file FILE (or P11KMS_PIN_FILE) or set P11KMS_PIN")
    }
}

/// Prints a one-line error to stderr and exits with `code`.
func fail(_ message: String, code: Int32 = 1) -> Never {
    FileHandle.standardError.write(Data("p11kms: \(message)\n".utf8))
    exit(code)
}

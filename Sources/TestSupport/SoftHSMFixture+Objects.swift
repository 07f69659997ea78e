import Foundation

extension SoftHSMFixture {
    /// Generates a secret key in the token labelled `token` with OpenSC's `pkcs11-tool` (as an operator or another
    /// program would, outside p11kms). `attributes` are pkcs11-tool's flags, e.g. `["--extractable"]` or
    /// `["--sensitive", "--private"]`; without `--sensitive` the key is not sensitive. `id` is hex.
    public func generateKeyWithTool(token: String, label: String, idHex: String, keyType: String = "AES:32",
                                    attributes: [String]) throws {
        let result = try Command.run("/usr/bin/pkcs11-tool",
            ["--module", SoftHSMFixture.modulePath, "--slot", try slotID(token: token), "--login", "--pin", SoftHSMFixture.userPIN,
             "--keygen", "--key-type", keyType, "--label", label, "--id", idHex, "--usage-decrypt"] + attributes,
            environment: environment)
        guard result.status == 0 else {
            throw FixtureError("pkcs11-tool --keygen failed (\(result.status)): \(result.stderr)")
        }
    }

    /// The slot ID of the token labelled `token`, from `pkcs11-tool -L`: its `--token-label` matches by prefix
    /// ("pool-1" would find "pool-10").
    func slotID(token: String) throws -> String {
        let listing = try Command.run("/usr/bin/pkcs11-tool", ["--module", SoftHSMFixture.modulePath, "-L"], environment: environment)
        for block in listing.stdout.components(separatedBy: "\nSlot ").map({ $0.hasPrefix("Slot ") ? String($0.dropFirst(5)) : $0 }) {
            let lines = block.split(separator: "\n")
            guard lines.contains(where: { $0.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) } == ["token label", token] }),
                  let open = block.firstIndex(of: "("), let close = block.firstIndex(of: ")") else { continue }
            return String(block[block.index(after: open)..<close])
        }
        throw FixtureError("no slot holds a token labelled \(token): \(listing.stdout)")
    }
}

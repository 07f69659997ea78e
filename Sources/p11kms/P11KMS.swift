import ArgumentParser

@main
struct P11KMS: ParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "p11kms",
        abstract: "A Kubernetes KMS v2 (and v1) plugin whose root keys live in a PKCS#11 token.",
        discussion: """
        The root keys are AES-256 keys generated inside the token (SoftHSM2 by default, or any vendor HSM's PKCS#11
        library) and can never be read. The PIN comes from --pin-file or the P11KMS_PIN environment variable, never
        from the command line.
        """,
        version: version,
        subcommands: [Init.self, Serve.self, Status.self, Rotate.self, Keys.self, Retire.self, Restore.self, Destroy.self, Audit.self, TokenBackupsCommand.self]
    )
}

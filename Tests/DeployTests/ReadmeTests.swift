import Foundation
import Testing
import TestSupport
import Yams

/// The README tells an admin the same socket, paths, flags and names as the files in deploy/, and the notes on
/// vendor HSMs quote what the p11-kit proxy test measures.
@Suite("README agrees with deploy/")
struct ReadmeTests {
    static func readme() throws -> String { try Repository.text("README.md") }

    static func matches(_ pattern: String, in text: String) throws -> [String] {
        let regex = try NSRegularExpression(pattern: pattern)
        return regex.matches(in: text, range: NSRange(text.startIndex..., in: text)).map {
            String(text[Range($0.range(at: $0.numberOfRanges > 1 ? 1 : 0), in: text)!])
        }
    }

    @Test func theAdminPathTroubleshootingAndFabricSectionsArePresent() throws {
        let readme = try Self.readme()
        for heading in ["## From nothing to an encrypting control plane", "## Troubleshooting", "## Protecting Hyperledger Fabric node keys"] {
            #expect(readme.contains("\n\(heading)\n"), "missing section \(heading)")
        }
        // The sections the admin path points to by name.
        #expect(readme.contains("\"Rotation runbook\""))
        #expect(readme.contains("\"Health and metrics\""))
        for needle in ["/healthz/kms-providers", "apiserver_envelope_encryption_kms_operations_latency_seconds", "p11kms audit",
                       "kubectl get secrets -A -o json | kubectl replace -f -", "ecert-<node>-keystore", "tls-<node>-keystore",
                       "<ca>-ca-crypto"] {
            #expect(readme.contains(needle), "README lacks \(needle)")
        }
    }

    @Test func socketPathsFlagsAndFilesAreTheCanonicalOnes() throws {
        let readme = try Self.readme()
        let pod = try StaticPod.load()
        for value in [Canonical.endpoint, Canonical.pinFile, Canonical.softHSMConf, Canonical.tokenDirectory, Canonical.configFile,
                      Canonical.httpListen, Canonical.encryptionConfig, Canonical.encryptionConfigFlag, Canonical.automaticReloadFlag,
                      "http://\(Canonical.httpListen)/livez"] {
            #expect(readme.contains(value), "README lacks \(value)")
        }
        // Every socket under /var/run/ is the plugin's endpoint.
        for socket in try Self.matches("unix:///var/run/[^\\s`'\")]+", in: readme) {
            #expect(socket == Canonical.endpoint, "README names the socket \(socket)")
        }
        // Every --encryption-provider-config names the installed EncryptionConfiguration.
        for path in try Self.matches("--encryption-provider-config=([^\\s`]+)", in: readme) {
            #expect(path == Canonical.encryptionConfig)
        }
        // The audit talks to the provider and socket of the EncryptionConfiguration.
        for provider in try Self.matches("--provider ([^\\s`]+)", in: readme) {
            #expect(provider == Canonical.providerName)
        }
        for listen in try Self.matches("--listen[ =](unix:///var/run/[^\\s`]+)", in: readme) {
            #expect(listen == Canonical.endpoint)
        }
        // The static pod's flags as the README quotes them, and the systemd unit's command.
        for flag in ["listen", "pin-file", "http-listen"] {
            let value = try #require(pod.plugin.flag(flag))
            #expect(readme.contains("--\(flag)=\(value)"), "README lacks --\(flag)=\(value)")
        }
        let unit = SystemdUnit(try Repository.text(SystemdUnitTests.unitPath))
        let execStart = try #require(unit.value("Service", "ExecStart"))
        #expect(readme.contains("p11kms " + execStart.split(separator: " ").dropFirst().joined(separator: " ")))
        // Every deploy/ file the README names exists.
        for path in try Self.matches("deploy/[A-Za-z0-9_./+-]*[A-Za-z0-9_]", in: readme) {
            #expect(FileManager.default.fileExists(atPath: Repository.url(path).path), "README names \(path), which does not exist")
        }
    }

    @Test func theREADMEsEncryptionConfigurationIsTheDeployedOne() throws {
        let deployed = try EncryptionConfig.load()
        let blocks = try fencedBlocks(Self.readme(), language: "yaml").compactMap { try Yams.load(yaml: $0) as? [String: Any] }
        let configs = blocks.filter { $0["kind"] as? String == "EncryptionConfiguration" }
        #expect(!configs.isEmpty)
        for document in configs {
            let config = try EncryptionConfig(document)
            #expect(canonicalForm(config.kms) == canonicalForm(deployed.kms))
            #expect(config.providers.count == deployed.providers.count)
            #expect(config.providers.last?["identity"] != nil)
        }
    }

    @Test func theHSMNotesQuoteTheMeasuredProxyBehaviour() throws {
        let notes = try Repository.text("deploy/hsm/README.md")
        #expect(notes.contains(P11KitProxyTests.measuredInitError))
        #expect(notes.contains(P11KitProxyTests.measuredHealthz))
        #expect(notes.contains(P11KitProxy.clientModule))
        #expect(notes.contains("P11_KIT_SERVER_ADDRESS=unix:path="))
        #expect(notes.contains("0.24.1"))
        for vendor in ["Luna", "CloudHSM", "YubiHSM"] {
            #expect(notes.contains("## \(vendor)") || notes.contains("## Thales \(vendor)") || notes.contains("## AWS \(vendor)")
                    || notes.contains("## \(vendor) 2"), "no section on \(vendor)")
        }
    }
}

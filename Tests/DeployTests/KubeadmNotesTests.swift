import Foundation
import Testing
import TestSupport

/// deploy/kubeadm/README.md's procedures are in a workable order, quote the static pod's own paths, and are the
/// steps scripts/three-node-demo.sh runs; every reference to a README section names one that exists.
@Suite("kubeadm notes")
struct KubeadmNotesTests {
    static let notesPath = "deploy/kubeadm/README.md"

    /// The text of the `## heading` section of `markdown` (up to the next `## `).
    static func section(_ heading: String, of markdown: String) throws -> String {
        let start = try #require(markdown.range(of: "\n## \(heading)\n"), "no section \(heading)")
        let rest = markdown[start.upperBound...]
        return String(rest[..<(rest.range(of: "\n## ")?.lowerBound ?? rest.endIndex)])
    }

    static func position(_ needle: String, in text: String) throws -> String.Index {
        try #require(text.range(of: needle), "missing: \(needle)").lowerBound
    }

    @Test func theMultiNodeProcedureCreatesOnceCopiesThenStartsThePluginBeforeKubeadmAndVerifies() throws {
        let notes = try Repository.text(Self.notesPath)
        for heading in ["One control-plane node", "Several control-plane nodes"] {
            let text = try Self.section(heading, of: notes)
            let create = try Self.position("P11KMS_CREATE_TOKEN=yes deploy/bootstrap/init-token.sh", in: text)
            let manifest = try Self.position("install -m 0644 \(StaticPod.path) /etc/kubernetes/manifests/p11kms.yaml", in: text)
            let kubeadm = try Self.position("kubeadm init ", in: text)
            #expect(create < manifest && manifest < kubeadm, "\(heading): token, then the manifest, then kubeadm")
            // kubeadm's preflight refuses a non-empty manifests folder: every init/join there skips exactly that check.
            let commands = text.replacingOccurrences(of: "\\\n", with: " ").split(separator: "\n").filter {
                $0.contains("kubeadm init ") || $0.contains("kubeadm join ")
            }
            #expect(!commands.isEmpty)
            for command in commands {
                #expect(command.contains("--patches /etc/kubernetes/patches"), "\(command)")
                #expect(command.contains("--ignore-preflight-errors=DirAvailable--etc-kubernetes-manifests"), "\(command)")
            }
        }
        let several = try Self.section("Several control-plane nodes", of: notes)
        let copy = try Self.position("rsync -a --checksum /etc/p11kms/pin /etc/p11kms/so-pin root@$node:/etc/p11kms/", in: several)
        let tokens = try Self.position("rsync -a --checksum /var/lib/p11kms/softhsm/tokens/ root@$node:/var/lib/p11kms/softhsm/tokens/", in: several)
        let manifest = try Self.position("/etc/kubernetes/manifests/p11kms.yaml", in: several)
        let verify = try Self.position("p11kms keys --config \(Canonical.configFile)", in: several)
        #expect(try Self.position("P11KMS_CREATE_TOKEN=yes", in: several) < copy)
        #expect(copy < manifest && tokens < manifest && manifest < verify)
    }

    @Test func theDemoScriptRunsTheDocumentedCommandsOnTheManifestsOwnSettings() throws {
        let script = try Repository.text("scripts/three-node-demo.sh")
        // The same copies (the node folder in place of root@node:), the token created only in the first-node step.
        #expect(script.contains(#"rsync -a --checksum "$from/etc/p11kms/pin" "$from/etc/p11kms/so-pin" "$to/etc/p11kms/""#))
        #expect(script.contains(#"rsync -a --checksum "$from/var/lib/p11kms/softhsm/tokens/" "$to/var/lib/p11kms/softhsm/tokens/""#))
        let code = script.split(separator: "\n").filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("#") }
        #expect(code.filter { $0.contains("P11KMS_CREATE_TOKEN=yes") }.count == 1, "one place creates the token")
        #expect(try #require(code.first { $0.contains("P11KMS_CREATE_TOKEN=yes") }).contains("$(node_env 1)"), "on node1")
        // The static pod is run from the manifest itself: its P11KMS_CREATE_TOKEN and the plugin container's flags.
        #expect(script.contains(#"manifest=$here/deploy/kubeadm/p11kms-static-pod.yaml"#))
        #expect(script.contains("P11KMS_CREATE_TOKEN=\"$create\""))
        let pod = try StaticPod.load()
        let flags = pod.plugin.command.filter { $0.hasPrefix("--") }
        let text = try Repository.text(StaticPod.path)
        for flag in flags { #expect(text.contains("        - \(flag)\n"), "\(flag) is not on a line the script reads") }
        // Admin commands use the config file installed from deploy/config.yaml.
        #expect(script.contains(#"keys --config "$(root "$1")/etc/p11kms/config.yaml""#))
        #expect(script.contains(#""$here/deploy/config.yaml""#))
    }

    @Test func theContainerRecipesUseThePluginContainersPaths() throws {
        let notes = try Repository.text(Self.notesPath)
        let pod = try StaticPod.load()
        let day2 = try Self.section("Day 2: keys, rotation, retiring, audit", of: notes)
        let tokenFlags = "--softhsm-conf \(try #require(pod.plugin.flag("softhsm-conf"))) --token-label \(try #require(pod.plugin.flag("token-label"))) --pin-file \(try #require(pod.plugin.flag("pin-file")))"
        #expect(day2.components(separatedBy: tokenFlags).count == 3, "crictl and kubectl recipes: \(tokenFlags)")
        #expect(day2.contains("crictl exec \"$(crictl ps --name '^p11kms$' -q)\" p11kms keys"))
        #expect(day2.contains("kubectl -n kube-system exec p11kms-<node-name> -c \(pod.plugin.name) -- p11kms keys"))
        for command in ["rotate --stage --config", "rotate --config", "retire KEY_ID --config", "retire OLD --config", "audit --etcd-endpoints"] {
            #expect(day2.contains("p11kms \(command)"), "\(command)")
        }
        // The pod's environment gives exec'd commands SoftHSM's config too, and the image's default module is SoftHSM.
        #expect(pod.plugin.environment["SOFTHSM2_CONF"] == Canonical.softHSMConf)
    }

    /// `README, "Section"` and `deploy/…/README.md, "Section"` in deploy/, scripts/ and the sources, and the headings
    /// the README names in quotes after "README": each names a heading of that file.
    @Test func everyReferenceToAREADMESectionNamesAnExistingHeading() throws {
        var files = ["scripts/three-node-demo.sh", "deploy/bootstrap/init-token.sh", "deploy/Dockerfile",
                     "deploy/systemd/p11kms.service", "deploy/systemd/p11kms.env", "README.md",
                     "deploy/kubeadm/README.md", "deploy/hsm/README.md",
                     "Sources/p11kms/TokenOptions.swift", "Sources/p11kms/KeyCommands.swift"]
        files += Repository.deployYAMLFiles()
        let regex = try NSRegularExpression(pattern: #"((?:deploy/[a-z]+/)?README(?:\.md)?),? \\?"([^"\\]+)\\?""#)
        var checked = 0
        for file in files {
            // References broken over comment lines read as one line.
            let text = try Repository.text(file).replacingOccurrences(of: #"\n\s*(#|//)?\s*"#, with: " ", options: .regularExpression)
            for match in regex.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                var target = String(text[Range(match.range(at: 1), in: text)!])
                let heading = String(text[Range(match.range(at: 2), in: text)!])
                if target == "README" { target = "README.md" }
                let headings = try Repository.text(target).split(separator: "\n").filter { $0.hasPrefix("#") }
                    .map { $0.drop { $0 == "#" }.trimmingCharacters(in: .whitespaces) }
                #expect(headings.contains(heading), "\(file) refers to \(target), \"\(heading)\", which has no such heading")
                checked += 1
            }
        }
        #expect(checked >= 8)
    }
}

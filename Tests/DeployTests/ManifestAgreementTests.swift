import Foundation
import Testing
import TestSupport
import Yams

/// The YAML under deploy/ parses, and the socket, paths, flags and names in the EncryptionConfiguration, the static
/// pod, the kube-apiserver patch, the example config file and the kubeadm notes are the same ones.
@Suite("deploy/ manifests agree")
struct ManifestAgreementTests {
    @Test func everyYAMLFileUnderDeployParses() throws {
        let files = Repository.deployYAMLFiles()
        for expected in ["deploy/encryption-config.yaml", "deploy/config.yaml", StaticPod.path, APIServerPatch.path] {
            #expect(files.contains(expected), "\(expected) is missing")
        }
        for file in files {
            let documents = try Repository.yamlDocuments(file)
            #expect(!documents.isEmpty, "\(file) holds no YAML document")
            for document in documents {
                #expect(document is [String: Any] || document is [Any], "\(file): the document is neither a mapping nor a list")
            }
        }
    }

    @Test func encryptionConfigurationUsesKMSv2WithIdentityFallback() throws {
        let config = try EncryptionConfig.load()
        #expect(config.document["apiVersion"] as? String == "apiserver.config.k8s.io/v1")
        #expect(config.document["kind"] as? String == "EncryptionConfiguration")
        #expect(config.resources == ["secrets"])
        #expect(config.kms["apiVersion"] as? String == "v2")
        #expect(config.kms["name"] as? String == Canonical.providerName)
        #expect(!(config.kms["name"] as? String ?? ":").contains(":"), "a KMS v2 provider name must not contain ':'")
        #expect(config.endpoint == Canonical.endpoint)
        #expect(config.kms["timeout"] as? String == "3s")
        #expect(config.kms["cachesize"] == nil, "cachesize is valid for KMS v1 only")
        #expect(config.providers.count == 2)
        #expect(config.providers.last?["identity"] is [String: Any], "identity must follow kms, to read Secrets written before encryption")
        // The comment that keeps the name from being changed.
        let text = try Repository.text("deploy/encryption-config.yaml")
        #expect(text.contains("never rename"))
        #expect(text.contains("k8s:enc:kms:v2:p11kms:"))
    }

    @Test func staticPodServesTheEndpointOfTheEncryptionConfiguration() throws {
        let config = try EncryptionConfig.load()
        let pod = try StaticPod.load()
        #expect(pod.document["apiVersion"] as? String == "v1")
        #expect(pod.document["kind"] as? String == "Pod")
        #expect((pod.document["metadata"] as? [String: Any])?["namespace"] as? String == "kube-system")
        #expect(pod.spec["hostNetwork"] as? Bool == true)

        let plugin = pod.plugin
        #expect(Array(plugin.command.prefix(2)) == [Canonical.binary, "serve"])
        #expect(plugin.flag("listen") == config.endpoint)
        // The socket's folder is a hostPath volume mounted at the same path, so that kube-apiserver (which mounts
        // the same host folder) dials the same file.
        let socketFolder = (config.socketPath as NSString).deletingLastPathComponent
        #expect(socketFolder == Canonical.socketDirectory)
        #expect(plugin.mount(covering: config.socketPath)?.mountPath == socketFolder)
        #expect(plugin.mount(covering: config.socketPath)?.readOnly == false)
        #expect(pod.hostPath(of: config.socketPath, in: plugin) == config.socketPath)

        #expect(plugin.flag("module") == Canonical.softHSMModule)
        #expect(plugin.flag("token-label") == Canonical.tokenLabel)
        #expect(plugin.flag("pin-file") == Canonical.pinFile)
        #expect(plugin.flag("softhsm-conf") == Canonical.softHSMConf)
        #expect(plugin.environment["SOFTHSM2_CONF"] == Canonical.softHSMConf, "for admin commands run in the container")
        #expect(pod.hostPath(of: Canonical.pinFile, in: plugin) == Canonical.pinFile)
        #expect(plugin.mount(covering: Canonical.pinFile)?.readOnly == true, "the plugin only reads /etc/p11kms")
        #expect(pod.hostPath(of: Canonical.softHSMConf, in: plugin) == Canonical.softHSMConf)
        #expect(pod.hostPath(of: Canonical.tokenDirectory, in: plugin) == Canonical.tokenDirectory)
        #expect(plugin.mount(covering: Canonical.tokenDirectory)?.readOnly == false, "SoftHSM writes its token files")
    }

    @Test func staticPodProbesTheHTTPListener() throws {
        let pod = try StaticPod.load()
        let httpListen = try #require(pod.plugin.flag("http-listen"))
        #expect(httpListen == Canonical.httpListen)
        let parts = httpListen.split(separator: ":")
        let (host, port) = (String(parts[0]), Int(parts[1]))
        for (probe, path) in [("livenessProbe", "/livez"), ("startupProbe", "/livez"), ("readinessProbe", "/readyz")] {
            let get = try #require((pod.plugin.raw[probe] as? [String: Any])?["httpGet"] as? [String: Any], "\(probe) has no httpGet")
            #expect(get["path"] as? String == path, "\(probe)")
            #expect(get["host"] as? String == host, "\(probe)")
            #expect(get["port"] as? Int == port, "\(probe)")
        }
        let resources = try #require(pod.plugin.raw["resources"] as? [String: Any])
        let requests = try #require(resources["requests"] as? [String: Any])
        #expect(requests["cpu"] != nil && requests["memory"] != nil)
        #expect((resources["limits"] as? [String: Any])?["memory"] != nil)
    }

    @Test func initContainerBootstrapsTheSameTokenWithTheScriptTheImageShips() throws {
        let pod = try StaticPod.load()
        let initContainer = try #require(pod.initContainers.first)
        #expect(pod.initContainers.count == 1)
        // The Dockerfile installs deploy/bootstrap/init-token.sh where the init container runs it.
        let dockerfile = try Repository.text("deploy/Dockerfile")
        let copy = try #require(dockerfile.split(separator: "\n").first { $0.hasPrefix("COPY deploy/bootstrap/init-token.sh ") })
        let installed = String(copy.split(separator: " ").last!)
        #expect(initContainer.command == [installed])
        #expect(dockerfile.contains("NOT BUILT BY CI"))
        #expect(initContainer.environment["P11KMS_TOKEN_LABEL"] ?? Canonical.tokenLabel == pod.plugin.flag("token-label"))
        // Never a token (and a root key) of its own: the first node's token is created by hand and copied.
        #expect(initContainer.environment["P11KMS_CREATE_TOKEN"] == "no")
        #expect(initContainer.environment["SOFTHSM2_CONF"] == nil && initContainer.environment["P11KMS_MODULE"] == nil,
                "the script's own SoftHSM defaults are the pod's paths")
        for path in [Canonical.pinFile, Canonical.softHSMConf, Canonical.tokenDirectory] {
            #expect(pod.hostPath(of: path, in: initContainer) == path, "\(path) in the init container")
            #expect(initContainer.mount(covering: path)?.readOnly == false, "the init container writes \(path)")
        }
        // The script's defaults are the paths the pod mounts.
        let script = try Repository.text("deploy/bootstrap/init-token.sh")
        #expect(script.contains("etc=${P11KMS_ETC:-/etc/p11kms}"))
        #expect(script.contains("state=${P11KMS_STATE:-/var/lib/p11kms}"))
        #expect(script.contains("tokens=$state/softhsm/tokens"))
        #expect(script.contains("conf=$etc/softhsm2.conf"))
        #expect(script.contains("pin_file=$etc/pin"))
        #expect(script.contains("bin=${P11KMS_BIN:-\(Canonical.binary)}"))
        #expect(script.contains("label=${P11KMS_TOKEN_LABEL:-\(Canonical.tokenLabel)}"))
        // Both containers run the image that deploy/Dockerfile builds.
        let images = Set(([pod.plugin] + pod.initContainers).compactMap { $0.raw["image"] as? String })
        #expect(images.count == 1)
    }

    @Test func apiserverPatchMountsTheSameSocketFolderAndTheEncryptionConfiguration() throws {
        let config = try EncryptionConfig.load()
        let pod = try StaticPod.load()
        let patch = try APIServerPatch.load()
        #expect(patch.operations.allSatisfy { $0["op"] as? String == "add" })
        #expect(patch.addedFlags == [Canonical.encryptionConfigFlag, Canonical.automaticReloadFlag])
        // The flag names the file deploy/encryption-config.yaml is installed as, in a read-only hostPath mount.
        let file = String(Canonical.encryptionConfigFlag.split(separator: "=", maxSplits: 1)[1])
        #expect(file == Canonical.encryptionConfig)
        #expect((file as NSString).lastPathComponent == "encryption-config.yaml")
        #expect(try patch.hostPath(of: file) == file)
        #expect(try patch.container().mount(covering: file)?.readOnly == true)
        // kube-apiserver sees the socket where the plugin creates it, through the same host folder.
        #expect(try patch.hostPath(of: config.socketPath) == pod.hostPath(of: config.socketPath, in: pod.plugin))
        #expect(try patch.container().mount(covering: config.socketPath)?.mountPath == Canonical.socketDirectory)
        #expect(try patch.hostPaths()[#require(patch.container().mount(covering: config.socketPath)?.volume)]
            == pod.hostPaths[#require(pod.plugin.mount(covering: config.socketPath)?.volume)])
    }

    @Test func kubeadmNotesShowTheSameFlagsMountsAndVolumesAsThePatch() throws {
        let patch = try APIServerPatch.load()
        let blocks = try fencedBlocks(Repository.text("deploy/kubeadm/README.md"), language: "yaml").map { try Yams.load(yaml: $0) as Any }
        #expect(blocks.count == 3)
        let lists = try blocks.map { try asList($0, "kubeadm README yaml block") }
        #expect(lists.count == 3)
        guard lists.count == 3 else { return }
        #expect(lists[0].compactMap { $0 as? String } == patch.addedFlags)
        #expect(canonicalForm(lists[1]) == canonicalForm(patch.values(at: "/spec/containers/0/volumeMounts/-")))
        #expect(canonicalForm(lists[2]) == canonicalForm(patch.values(at: "/spec/volumes/-")))
    }

    @Test func exampleConfigFileAgreesWithTheStaticPod() throws {
        let config = try EncryptionConfig.load()
        let pod = try StaticPod.load()
        let file = try asMap(Repository.yaml("deploy/config.yaml"), "deploy/config.yaml")
        #expect(file["listen"] as? String == config.endpoint)
        for key in ["module", "token-label", "pin-file", "softhsm-conf", "http-listen", "log-format"] {
            #expect(file[key] as? String == pod.plugin.flag(key), "\(key)")
        }
        #expect(file["pin-file"] as? String == Canonical.pinFile)
        #expect(file["socket-mode"] as? String == "0600", "an octal mode must be quoted, or YAML reads a number")
        // Only serve's long flag names; the PIN itself has no key.
        let known: Set<String> = ["listen", "module", "token-label", "pin-file", "softhsm-conf", "socket-mode", "socket-group", "status-version",
                                  "http-listen", "log-format", "log-level", "max-sessions", "worker-threads", "shutdown-grace"]
        #expect(Set(file.keys).subtracting(known).isEmpty, "unknown keys: \(Set(file.keys).subtracting(known))")
    }

    @Test func noManifestCarriesAPIN() throws {
        for file in Repository.deployYAMLFiles() {
            for document in try Repository.yamlDocuments(file) {
                for (path, value) in allStrings(document) {
                    #expect(!(value == "--pin" || value.hasPrefix("--pin=") || value.contains("--so-pin")), "\(file)\(path): \(value)")
                    #expect(!(path.hasSuffix("(key)") && ["pin", "so-pin", "user-pin"].contains(value)), "\(file)\(path)")
                }
                for mapping in allMappings(document) {
                    let name = mapping["name"] as? String ?? ""
                    #expect(!(name.hasSuffix("PIN") && mapping["value"] != nil), "\(file): environment value \(name)")
                }
            }
        }
        // Nor the unit, its environment file or the image.
        for file in ["deploy/systemd/p11kms.service", "deploy/systemd/p11kms.env", "deploy/Dockerfile"] {
            for line in try Repository.text(file).split(separator: "\n") where !line.hasPrefix("#") {
                #expect(!line.contains("P11KMS_PIN="), "\(file): \(line)")
                #expect(!line.contains("--pin ") && !line.contains("--pin="), "\(file): \(line)")
            }
        }
    }
}

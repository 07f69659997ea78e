import Foundation
import Testing
import TestSupport
import Yams

/// The static-pod snippets for vendor HSMs in deploy/hsm/README.md ("In the static pod") are valid pod fragments:
/// the plugin serves the same socket, PIN file and health listener as the SoftHSM manifest, every mount has a
/// hostPath or emptyDir volume, and nothing of SoftHSM (init container, token directory, SOFTHSM2_CONF) is left.
@Suite("vendor HSM static-pod snippets")
struct VendorPodSnippetTests {
    static func snippets() throws -> [[String: Any]] {
        let notes = try Repository.text("deploy/hsm/README.md")
        let start = try #require(notes.range(of: "\n## In the static pod\n"))
        let section = String(notes[start.upperBound...])
        let end = section.range(of: "\n## ")?.lowerBound ?? section.endIndex
        return try fencedBlocks(String(section[..<end]), language: "yaml").map { try asMap(Yams.load(yaml: $0) as Any, "snippet") }
    }

    @Test func lunaAndGenericSnippetsKeepThePodsContractAndDropSoftHSM() throws {
        let snippets = try Self.snippets()
        #expect(snippets.count == 2, "a Luna and a generic snippet")
        let pod = try StaticPod.load()
        for (index, snippet) in snippets.enumerated() {
            let spec = try snippet["spec"].mapping("spec")
            #expect(spec["initContainers"] == nil, "snippet \(index): no SoftHSM init container")
            let containers = try asList(spec["containers"], "containers").map { try ContainerSpec(asMap($0, "container")) }
            let plugin = try #require(containers.first)
            #expect(containers.count == 1 && plugin.name == pod.plugin.name)
            #expect(Array(plugin.command.prefix(2)) == [Canonical.binary, "serve"])
            for flag in ["listen", "pin-file", "http-listen"] {
                #expect(plugin.flag(flag) == pod.plugin.flag(flag), "snippet \(index): --\(flag)")
            }
            let module = try #require(plugin.flag("module"))
            #expect(!module.contains("softhsm") && plugin.flag("token-label") != nil, "snippet \(index): \(module)")
            #expect(plugin.flag("softhsm-conf") == nil && plugin.environment["SOFTHSM2_CONF"] == nil)
            #expect(plugin.environment.keys.allSatisfy { !$0.contains("PIN") }, "no PIN in the environment")

            let volumes = try asList(spec["volumes"], "volumes").map { try asMap($0, "volume") }
            let names = Set(volumes.compactMap { $0["name"] as? String })
            for (path, mount) in plugin.mounts {
                #expect(names.contains(mount.volume), "snippet \(index): \(path) mounts \(mount.volume), which is no volume")
            }
            #expect(!names.contains("p11kms-tokens"), "snippet \(index): no SoftHSM token directory")
            let hostPaths = try hostPathVolumes(volumes)
            // The module, and the socket and PIN file at the pod's host paths.
            #expect(plugin.mount(covering: module).map { hostPaths[$0.volume] != nil } == true, "snippet \(index): \(module) is not mounted")
            #expect(plugin.mount(covering: module)?.readOnly == true)
            for path in [Canonical.socketDirectory + "/p11kms.sock", Canonical.pinFile] {
                let mount = try #require(plugin.mount(covering: path))
                #expect(hostPaths[mount.volume].map { $0 + path.dropFirst(mount.mountPath.count) } == path, "snippet \(index): \(path)")
            }
            #expect(plugin.mount(covering: Canonical.pinFile)?.readOnly == true)
        }
        // Luna: the client's folder (library, certificates) and Chrystoki.conf, found through ChrystokiConfigurationPath.
        let luna = try ContainerSpec(asMap(try asList(try snippets[0]["spec"].mapping()["containers"]).first!))
        let confFolder = try #require(luna.environment["ChrystokiConfigurationPath"])
        #expect(luna.mount(covering: confFolder + "/Chrystoki.conf") != nil)
        #expect(luna.mount(covering: "/usr/safenet/lunaclient/cert") != nil)
    }
}

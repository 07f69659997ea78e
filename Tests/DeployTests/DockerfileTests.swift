import Foundation
import Testing
import TestSupport

/// deploy/Dockerfile is not built here (no container engine), so this checks what can be checked without one: the
/// base, the paths the static pod relies on, and that the packages it installs provide every shared library the
/// p11kms binary loads (the Swift runtime aside: the release build links it statically).
@Suite("Dockerfile")
struct DockerfileTests {
    static func dockerfile() throws -> [String] {
        try Repository.text("deploy/Dockerfile").split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }
    }

    /// The packages of the `apt-get install` line.
    static func installedPackages() throws -> [String] {
        let line = try #require(try dockerfile().first { $0.contains("apt-get install") })
        let words = line.split(separator: " ").map(String.init)
        let start = try #require(words.firstIndex(of: "install"))
        return Array(words[(start + 1)...].prefix { $0 != "\\" && $0 != "&&" }.filter { !$0.hasPrefix("-") })
    }

    @Test func bookwormBaseCanonicalPathsAndNoBuildInCI() throws {
        let lines = try Self.dockerfile()
        #expect(lines.first { $0.hasPrefix("FROM ") } == "FROM debian:bookworm-slim")
        #expect(lines.contains { $0.hasPrefix("COPY ") && $0.hasSuffix(" \(Canonical.binary)") })
        #expect(lines.contains("ENV SOFTHSM2_CONF=\(Canonical.softHSMConf)"))
        #expect(try Repository.text("deploy/Dockerfile").contains("NOT BUILT BY CI"))
        let packages = try Self.installedPackages()
        for needed in ["softhsm2", "opensc", "libgrpc29"] {
            #expect(packages.contains(needed), "the image needs \(needed)")
        }
        // The build context holds only what the Dockerfile copies.
        let ignore = try Repository.text("deploy/Dockerfile.dockerignore").split(separator: "\n").filter { $0.hasPrefix("!") }
        let copied = lines.filter { $0.hasPrefix("COPY ") }.map { $0.split(separator: " ")[1] }
        #expect(Set(ignore.map { $0.dropFirst() }) == Set(copied))
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/dpkg-query")))
    func theImagesPackagesProvideEverySharedLibraryOfTheBinary() throws {
        let packages = try Self.installedPackages()
        let closureRun = try Command.run("/usr/bin/apt-cache",
            ["depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces",
             "--no-enhances"] + packages)
        #expect(closureRun.status == 0, "\(closureRun.stderr)")
        let closure = Set(closureRun.stdout.split(separator: "\n").filter { !$0.hasPrefix(" ") }.map(String.init))
        #expect(closure.isSuperset(of: packages))

        let ldd = try Command.run("/usr/bin/ldd", [PluginProcess.executable])
        #expect(ldd.status == 0, "\(ldd.stderr)")
        let libraries = ldd.stdout.split(separator: "\n").compactMap { line -> String? in
            let parts = line.split(separator: " ")
            guard let arrow = parts.firstIndex(of: "=>"), arrow + 1 < parts.count else { return nil }
            return String(parts[arrow + 1])
        }
        #expect(libraries.contains { $0.hasSuffix("/libgrpc.so.29") })
        let system = libraries.filter { !$0.contains("/swift/") }  // the Swift runtime: static in the release build
        let owners = try owningPackages(system)
        for library in system {
            let owner = owners[library] ?? owners["/usr" + library]
            #expect(owner.map(closure.contains) == true, "\(library) comes from \(owner ?? "no package"), which the image does not install")
        }
    }

    /// The Debian package that ships each path, looked up in one dpkg-query call (each path also under /usr, for
    /// merged-/usr systems, where the loader's /lib path is the package's /usr/lib path).
    private func owningPackages(_ paths: [String]) throws -> [String: String] {
        let result = try Command.run("/usr/bin/dpkg-query", ["-S"] + paths + paths.map { "/usr" + $0 })
        var owners: [String: String] = [:]
        for line in result.stdout.split(separator: "\n") {
            // "libgrpc29:amd64: /usr/lib/x86_64-linux-gnu/libgrpc.so.29"
            guard let separator = line.range(of: ": /") else { continue }
            let package = line[..<separator.lowerBound].split(separator: ",").first.map { String($0.split(separator: ":")[0]) }
            owners[String(line[line.index(before: separator.upperBound)...])] = package
        }
        return owners
    }
}

// swift-tools-version:6.1
import Foundation
import PackageDescription

// libFuzzer targets for every parser of outside bytes. Built and run by scripts/fuzz.sh, never by the main
// package's `swift build` (CI time): each target is an executable whose main() is libFuzzer's.
let fuzzer: [LinkerSetting] = [.unsafeFlags(["-sanitize=fuzzer", "-use-ld=lld"])]
let library: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]
let parsers: [Target.Dependency] = [.product(name: "P11KMSParsers", package: "p11kms"), "FuzzDriver"]

let package = Package(
    name: "p11kms-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "p11kms", path: ".."),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        .target(name: "FuzzDriver"),
        .executableTarget(name: "FuzzEnvelope", dependencies: parsers, swiftSettings: library, linkerSettings: fuzzer),
        .executableTarget(name: "FuzzStorageClassifier", dependencies: parsers, swiftSettings: library, linkerSettings: fuzzer),
        .executableTarget(name: "FuzzKMSRequests", dependencies: parsers + [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
                          swiftSettings: library, linkerSettings: fuzzer),
        .executableTarget(name: "FuzzConfigFile", dependencies: parsers, swiftSettings: library, linkerSettings: fuzzer),
    ],
    swiftLanguageModes: [.v6]
)

// The audit JSON reader that `destroy` uses lives in EtcdAudit as `AuditProof`; fuzz it where the tree has it.
let auditProof = Context.packageDirectory + "/../Sources/EtcdAudit/AuditProof.swift"
if FileManager.default.fileExists(atPath: auditProof) {
    package.targets.append(.executableTarget(name: "FuzzAuditProof", dependencies: parsers, swiftSettings: library,
                                             linkerSettings: fuzzer))
}

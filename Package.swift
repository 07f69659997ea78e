// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "p11kms",
    platforms: [.macOS(.v15)],
    products: [
        // A fault-injecting PKCS#11 module for the recovery tests (libFaultPKCS11.so next to the test bundle).
        .library(name: "FaultPKCS11", type: .dynamic, targets: ["CFaultPKCS11"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        .systemLibrary(name: "CGRPC", path: "Sources/CGRPC"),
        .systemLibrary(name: "CPKCS11", path: "Sources/CPKCS11"),
        .target(name: "PKCS11", dependencies: ["CPKCS11"]),
        .target(name: "KeyService", dependencies: ["PKCS11", "CPKCS11"]),
        .target(name: "TestSupport", path: "Sources/TestSupport"),
        .target(name: "CFaultPKCS11", path: "Sources/CFaultPKCS11", linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("pthread")]),
        .testTarget(name: "KeyServiceTests", dependencies: ["KeyService", "PKCS11", "CPKCS11", "TestSupport"]),
        .testTarget(name: "FaultTests", dependencies: ["KeyService", "PKCS11", "CPKCS11", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)

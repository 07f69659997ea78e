// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "p11kms",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        .systemLibrary(name: "CGRPC", path: "Sources/CGRPC"),
        .systemLibrary(name: "CPKCS11", path: "Sources/CPKCS11"),
        .target(
            name: "GRPCTransport",
            dependencies: [
                "CGRPC",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "GRPCTransportBench",
            dependencies: ["GRPCTransport"]
        ),
        .testTarget(
            name: "GRPCTransportTests",
            dependencies: ["GRPCTransport"]
        ),
    ],
    swiftLanguageModes: [.v6]
)

// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "p11kms",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "p11kms", targets: ["p11kms"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        // Tests only (TestSupport): HKDF and AES-GCM to store Secrets exactly as kube-apiserver does.
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        .systemLibrary(name: "CGRPC", path: "Sources/CGRPC"),
        .systemLibrary(name: "CPKCS11", path: "Sources/CPKCS11"),
        .target(name: "PKCS11", dependencies: ["CPKCS11"]),
        .target(name: "KeyService", dependencies: ["PKCS11", "CPKCS11"]),
        .target(name: "KMSServer", dependencies: [
            "GRPCTransport", "KeyService", "KMSProto",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        .executableTarget(name: "p11kms", dependencies: [
            "KMSServer", "KeyService", "PKCS11", "GRPCTransport", "KMSProto", "EtcdAudit",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // etcd KV client subset, storage-format classifier and report for `p11kms audit`; no PKCS#11.
        .target(name: "EtcdAudit", dependencies: [
            "GRPCTransport", "EtcdProto", "KMSProto",
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        .target(name: "TestSupport", dependencies: [
            "GRPCTransport", "KMSProto", "EtcdProto",
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], path: "Sources/TestSupport"),
        // Loads 100,000 Secrets into a local etcd and times `p11kms audit` (scripts/bench-audit.sh).
        .executableTarget(name: "AuditBench", dependencies: ["EtcdAudit", "TestSupport"]),
        .testTarget(name: "EtcdAuditTests", dependencies: [
            "EtcdAudit", "TestSupport", "EtcdProto", "KMSProto", "GRPCTransport",
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        .testTarget(name: "PluginTests", dependencies: [
            "TestSupport", "GRPCTransport", "KMSProto", "EtcdProto",
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        .testTarget(name: "KeyServiceTests", dependencies: ["KeyService", "PKCS11", "CPKCS11", "TestSupport"]),
        // Generated message types for the KMS plugin APIs (v2, v1beta1) and
        // the apiserver's EncryptedObject. Regenerate with
        // scripts/generate-protos.sh.
        .target(
            name: "KMSProto",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")]
        ),
        // Generated message types for the etcd v3 KV/Auth subset and the
        // Kubernetes storage envelope (runtime.Unknown, v1.Secret).
        .target(
            name: "EtcdProto",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")]
        ),
        .testTarget(
            name: "ProtoTests",
            dependencies: [
                "KMSProto",
                "EtcdProto",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
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

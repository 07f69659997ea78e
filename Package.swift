// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "p11kms",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "p11kms", targets: ["p11kms"]),
        // A fault-injecting PKCS#11 module for the recovery tests (libFaultPKCS11.so next to the test bundle).
        .library(name: "FaultPKCS11", type: .dynamic, targets: ["CFaultPKCS11"]),
        // The parsers of outside bytes, for the libFuzzer targets in Fuzz/ (a separate package: not built here).
        .library(name: "P11KMSParsers", targets: ["KeyService", "EtcdAudit", "KMSProto", "ConfigFile"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        // Tests only (TestSupport): HKDF and AES-GCM to store Secrets exactly as kube-apiserver does.
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        .systemLibrary(name: "CGRPC", path: "Sources/CGRPC"),
        .systemLibrary(name: "CPKCS11", path: "Sources/CPKCS11"),
        // Long-running parts as services (start, shutdown within a deadline), the one way threads are started.
        .target(name: "Lifecycle"),
        // libcrypto: PBKDF2 for the record of a rejected PIN (p11kms/PINRejectionRecord.swift).
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL"),
        .target(name: "PKCS11", dependencies: ["CPKCS11", "Lifecycle"]),
        .target(name: "KeyService", dependencies: ["PKCS11", "Lifecycle"]),
        .target(name: "KMSServer", dependencies: [
            "GRPCTransport", "KeyService", "KMSProto", "PKCS11",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        .executableTarget(name: "p11kms", dependencies: [
            "KMSServer", "KeyService", "PKCS11", "GRPCTransport", "KMSProto", "EtcdAudit", "ConfigFile", "COpenSSL",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        // The settings table and the config-file parser (pure: bytes in, settings out; fuzzed by Fuzz/).
        .target(name: "ConfigFile", dependencies: [.product(name: "Yams", package: "Yams")]),
        .executableTarget(name: "P11KMSBench", dependencies: [
            "GRPCTransport", "KMSProto", "KeyService", "PKCS11", "CPKCS11", "KMSServer",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
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
            "TestSupport", "GRPCTransport", "KMSProto", "EtcdProto", "KMSServer", "ConfigFile", "KeyService", "EtcdAudit",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        // The KMS pipeline, health and refusals in-process, on a real SoftHSM token.
        .testTarget(name: "KMSServerTests", dependencies: [
            "KMSServer", "KeyService", "PKCS11", "KMSProto", "GRPCTransport", "TestSupport",
            .product(name: "Logging", package: "swift-log"),
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
                "CGRPC", "Lifecycle",
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
        .target(name: "CFaultPKCS11", path: "Sources/CFaultPKCS11", linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("pthread")]),
        .testTarget(name: "FaultTests", dependencies: ["KeyService", "PKCS11", "CPKCS11", "TestSupport"]),
        // The deploy/ artifacts (manifests, unit, bootstrap script) agree with each other and with the README;
        // the bootstrap script and a PKCS#11 proxy (p11-kit server) run for real.
        .testTarget(name: "DeployTests", dependencies: [
            "TestSupport", "GRPCTransport", "KMSProto", .product(name: "Yams", package: "Yams"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)

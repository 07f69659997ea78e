import EtcdProto
import Foundation
import SwiftProtobuf
import Testing

// How the project builds a Secret value exactly as kube-apiserver stores it
// (unencrypted, protobuf storage):
//
//   "k8s\0" ‖ runtime.Unknown{ typeMeta{apiVersion, kind}, raw = v1.Secret,
//                              contentEncoding = "", contentType = "" }
//
// kube-apiserver's encoder always writes Unknown fields 3 and 4, even empty.
// These are proto2 `optional` fields, and swift-protobuf only emits a proto2
// optional field once it has been assigned, so the project always assigns
// contentEncoding and contentType explicitly (to "") when it builds a stored
// value. The same applies inside the Secret: the apiserver always writes
// ObjectMeta's name, generateName, namespace, selfLink, uid, resourceVersion,
// generation, creationTimestamp and clusterName and the Secret's type, so
// those are assigned too. Maps are written with sorted keys by the apiserver;
// swift-protobuf matches that with BinaryEncodingOptions.useDeterministicOrdering.

private let magic = bytes("6b 38 73 00")

private func deterministic() -> BinaryEncodingOptions {
    var options = BinaryEncodingOptions()
    options.useDeterministicOrdering = true
    return options
}

private func typeMeta() -> K8s_TypeMeta {
    var typeMeta = K8s_TypeMeta()
    typeMeta.apiVersion = "v1"
    typeMeta.kind = "Secret"
    return typeMeta
}

@Suite struct RuntimeUnknownWire {
    @Test func unsetOptionalFieldsAreNotEmitted() throws {
        var unknown = K8s_Unknown()
        unknown.typeMeta = typeMeta()
        unknown.raw = Data([0x0a, 0x00])
        #expect(!unknown.hasContentEncoding && !unknown.hasContentType)
        // typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2; nothing else.
        let expected = bytes("0a 0c  0a 02 7631  12 06 536563726574  12 02 0a00")
        #expect(hex(try unknown.serializedBytes()) == hex(expected))
    }

    @Test func explicitEmptyContentFieldsAreEmitted() throws {
        var unknown = K8s_Unknown()
        unknown.typeMeta = typeMeta()
        unknown.raw = Data([0x0a, 0x00])
        unknown.contentEncoding = ""
        unknown.contentType = ""
        // ... followed by contentEncoding = 3 (1a 00) and contentType = 4 (22 00),
        // as kube-apiserver writes them.
        let expected = bytes("0a 0c  0a 02 7631  12 06 536563726574  12 02 0a00  1a 00  22 00")
        #expect(hex(try unknown.serializedBytes()) == hex(expected))

        let decoded = try K8s_Unknown(serializedBytes: expected)
        #expect(decoded.hasContentEncoding && decoded.contentEncoding.isEmpty)
        #expect(decoded.hasContentType && decoded.contentType.isEmpty)
        #expect(decoded.typeMeta.kind == "Secret")
    }
}

@Suite struct StoredSecretWire {
    /// A Secret value as kube-apiserver writes it to etcd, assembled field by
    /// field from the generated.proto numbers (see the byte comments).
    static let stored = bytes("""
        6b387300
        0a0c 0a027631 1206536563726574
        128201
          0a54
            0a027331
            1200
            1a0764656661756c74
            2200
            2a24 30623063356238652d303030302d343030302d383030302d303030303030303030303031
            3200
            3800
            4208 0880e2cfaa06 1000
            5a0b 0a03617070 120464656d6f
            7a00
          1213 0a0870617373776f7264 120768756e74657232
          120d 0a0475736572 120561646d696e
          1a064f7061717565
        1a00
        2200
        """)

    @Test func buildsTheApiserverBytes() throws {
        var meta = K8s_ObjectMeta()
        meta.name = "s1"
        meta.generateName = ""
        meta.namespace = "default"
        meta.selfLink = ""
        meta.uid = "0b0c5b8e-0000-4000-8000-000000000001"
        meta.resourceVersion = ""
        meta.generation = 0
        var created = K8s_Time()
        created.seconds = 1_700_000_000
        created.nanos = 0
        meta.creationTimestamp = created
        meta.labels = ["app": "demo"]
        meta.clusterName = ""

        var secret = K8s_Secret()
        secret.metadata = meta
        secret.data = ["user": Data("admin".utf8), "password": Data("hunter2".utf8)]
        secret.type = "Opaque"

        var unknown = K8s_Unknown()
        unknown.typeMeta = typeMeta()
        unknown.raw = Data(try secret.serializedBytes(options: deterministic()) as [UInt8])
        unknown.contentEncoding = ""
        unknown.contentType = ""

        let value = magic + (try unknown.serializedBytes(options: deterministic()) as [UInt8])
        #expect(hex(value) == hex(Self.stored))
    }

    @Test func decodesTheApiserverBytes() throws {
        #expect(Array(Self.stored.prefix(4)) == magic)
        let unknown = try K8s_Unknown(serializedBytes: Array(Self.stored.dropFirst(4)))
        #expect(unknown.typeMeta.apiVersion == "v1")
        #expect(unknown.typeMeta.kind == "Secret")
        let secret = try K8s_Secret(serializedBytes: unknown.raw)
        #expect(secret.metadata.name == "s1")
        #expect(secret.metadata.namespace == "default")
        #expect(secret.metadata.creationTimestamp.seconds == 1_700_000_000)
        #expect(secret.metadata.labels == ["app": "demo"])
        #expect(secret.data["password"] == Data("hunter2".utf8))
        #expect(secret.data["user"] == Data("admin".utf8))
        #expect(secret.type == "Opaque")
        #expect(!secret.hasImmutable)
    }

    @Test func unlistedMetadataFieldsSurviveARoundTrip() throws {
        // metadata { name = "s", managedFields (17) = empty entry }:
        // tag for field 17, wire type 2 is varint 0x8a 0x01.
        let wire = bytes("0a 06  0a 01 73  8a01 00")
        let secret = try K8s_Secret(serializedBytes: wire)
        #expect(secret.metadata.name == "s")
        #expect(hex(try secret.serializedBytes()) == hex(wire))
    }

    @Test func immutableIsField5() throws {
        var secret = K8s_Secret()
        secret.immutable = true
        secret.stringData = ["k": "v"]
        #expect(hex(try secret.serializedBytes()) == "2206" + "0a016b120176" + "2801")
    }
}

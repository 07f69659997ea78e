import Foundation
import KMSProto
import SwiftProtobuf
import Testing

// Expected bytes below are worked out by hand from the field tables in
// docs/PROTOCOL.md: tag = (field << 3) | wireType, where wire type 0 is a
// varint and 2 is length-delimited.

@Suite struct KMSv2Wire {
    @Test func encryptResponseTags() throws {
        var response = V2_EncryptResponse()
        response.ciphertext = Data([0xde, 0xad, 0xbe, 0xef])
        response.keyID = "key-1"
        // ciphertext = 1 (0x0a), key_id = 2 (0x12)
        let expected = bytes("0a 04 deadbeef  12 05 6b65792d31")
        #expect(hex(try response.serializedBytes()) == hex(expected))

        // annotations = 3 (0x1a) is a map: each entry is a nested message
        // {key = 1, value = 2}.
        response.annotations = ["a.io": Data([0x07])]
        let withAnnotation = expected + bytes("1a 09  0a 04 612e696f  12 01 07")
        #expect(hex(try response.serializedBytes()) == hex(withAnnotation))
    }

    @Test func statusResponseTags() throws {
        var status = V2_StatusResponse()
        status.version = "v2"
        status.healthz = "ok"
        status.keyID = "k"
        #expect(hex(try status.serializedBytes()) == "0a02763212026f6b1a016b")
    }

    @Test func decryptRequestFromApiserverBytes() throws {
        // ciphertext = 1, uid = 2, key_id = 3, annotations = 4
        let wire = bytes("0a 01 01  12 01 75  1a 01 6b  22 09 0a 04 612e696f 12 01 02")
        let request = try V2_DecryptRequest(serializedBytes: wire)
        #expect(request.ciphertext == Data([0x01]))
        #expect(request.uid == "u")
        #expect(request.keyID == "k")
        #expect(request.annotations == ["a.io": Data([0x02])])
    }

    @Test func encryptRequestAndDecryptResponse() throws {
        var request = V2_EncryptRequest()
        request.plaintext = Data(repeating: 0x11, count: 2)
        request.uid = "u"
        #expect(hex(try request.serializedBytes()) == "0a0211111201" + "75")

        var response = V2_DecryptResponse()
        response.plaintext = Data([0x22])
        #expect(hex(try response.serializedBytes()) == "0a0122")
    }

    @Test func emptyStatusRequestIsEmpty() throws {
        #expect(try V2_StatusRequest().serializedBytes() == [UInt8]())
    }
}

@Suite struct EncryptedObjectWire {
    private func object(_ type: V2_EncryptedDEKSourceType) -> V2_EncryptedObject {
        var object = V2_EncryptedObject()
        object.encryptedData = Data([0xaa])
        object.keyID = "k"
        object.encryptedDeksource = Data([0xbb])
        object.encryptedDeksourceType = type
        return object
    }

    @Test func seedTypeEmitsField5() throws {
        let encoded: [UInt8] = try object(.hkdfSha256XnonceAesGcmSeed).serializedBytes()
        // ..., encryptedDEKSourceType = 5 (varint): 0x28 0x01
        #expect(hex(encoded) == "0a01aa" + "12016b" + "1a01bb" + "2801")
    }

    @Test func keyTypeOmitsField5() throws {
        let encoded: [UInt8] = try object(.aesGcmKey).serializedBytes()
        #expect(hex(encoded) == "0a01aa" + "12016b" + "1a01bb")
    }

    @Test func decodesBothTypes() throws {
        let seed = try V2_EncryptedObject(serializedBytes: bytes("0a01aa 12016b 1a01bb 2801"))
        #expect(seed.encryptedDeksourceType == .hkdfSha256XnonceAesGcmSeed)
        #expect(seed.keyID == "k")
        let key = try V2_EncryptedObject(serializedBytes: bytes("0a01aa 12016b 1a01bb"))
        #expect(key.encryptedDeksourceType == .aesGcmKey)
        #expect(key.encryptedDeksource == Data([0xbb]))
    }

    @Test func annotationsField4() throws {
        var object = V2_EncryptedObject()
        object.annotations = ["a.io": Data([0x01])]
        #expect(hex(try object.serializedBytes()) == "2209" + "0a04612e696f120101")
    }
}

@Suite struct KMSv1Wire {
    @Test func encryptRequest() throws {
        var request = V1beta1_EncryptRequest()
        request.version = "v1beta1"
        request.plain = Data([0x01])
        // version = 1, plain = 2
        #expect(hex(try request.serializedBytes()) == "0a07" + hex(ascii("v1beta1")) + "120101")
    }

    @Test func versionResponse() throws {
        let wire = bytes("0a 07") + ascii("v1beta1") + bytes("12 01") + ascii("p")
            + bytes("1a 03") + ascii("1.0")
        let response = try V1beta1_VersionResponse(serializedBytes: wire)
        #expect(response.version == "v1beta1")
        #expect(response.runtimeName == "p")
        #expect(response.runtimeVersion == "1.0")
    }

    @Test func cipherAndPlainFields() throws {
        var encrypted = V1beta1_EncryptResponse()
        encrypted.cipher = Data([0x09])
        #expect(hex(try encrypted.serializedBytes()) == "0a0109")

        var decrypt = V1beta1_DecryptRequest()
        decrypt.version = "v1beta1"
        decrypt.cipher = Data([0x09])
        #expect(hex(try decrypt.serializedBytes()) == "0a07" + hex(ascii("v1beta1")) + "120109")

        var plain = V1beta1_DecryptResponse()
        plain.plain = Data([0x08])
        #expect(hex(try plain.serializedBytes()) == "0a0108")
    }
}

import Foundation
import FuzzDriver
import KMSProto
import KeyService
import SwiftProtobuf

/// The KMS v2 and v1 request messages as the plugin receives them from its socket: decoded with the generated
/// types, then checked the way the handlers check them (key_id length, annotations, the ciphertext envelope,
/// plaintext limits). The first byte picks the message type. A decoded message re-encodes and decodes to itself.
func roundTrip<M: Message & Equatable>(_ message: M) {
    guard let bytes: [UInt8] = try? message.serializedBytes() else { preconditionFailure("a decoded message does not encode") }
    guard let again = try? M(serializedBytes: bytes) else { preconditionFailure("an encoded message does not decode") }
    precondition(again == message, "a decoded message changed on a round trip")
}

func checkCiphertext(_ ciphertext: Data) {
    guard ciphertext.count <= EnvelopeService.maxCiphertextV2 + 1024 else { return }
    if let envelope = try? Envelope(parsing: Array(ciphertext)) {
        precondition(envelope.serialized() == Array(ciphertext))
    }
}

func fuzzKMSRequests(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard count > 0, let data else { return 0 }
    let body = Data(UnsafeBufferPointer(start: data + 1, count: count - 1))
    switch data[0] % 6 {
    case 0:
        guard let request = try? V2_EncryptRequest(serializedBytes: body) else { return 0 }
        _ = request.plaintext.count <= EnvelopeService.maxPlaintextV2
        _ = request.uid.prefix(128)
        roundTrip(request)
    case 1:
        guard let request = try? V2_DecryptRequest(serializedBytes: body) else { return 0 }
        _ = request.keyID.utf8.count <= KMSv2Limits.maxKeyIDBytes
        _ = RootKeyID(keyID: request.keyID)
        _ = KMSv2Limits.annotationProblem(request.annotations)
        checkCiphertext(request.ciphertext)
        roundTrip(request)
    case 2:
        guard let request = try? V2_StatusRequest(serializedBytes: body) else { return 0 }
        roundTrip(request)
    case 3:
        guard let request = try? V1beta1_EncryptRequest(serializedBytes: body) else { return 0 }
        _ = request.version == "v1beta1"
        roundTrip(request)
    case 4:
        guard let request = try? V1beta1_DecryptRequest(serializedBytes: body) else { return 0 }
        checkCiphertext(request.cipher)
        roundTrip(request)
    default:
        guard let request = try? V1beta1_VersionRequest(serializedBytes: body) else { return 0 }
        roundTrip(request)
    }
    return 0
}

@_cdecl("FuzzKMSRequests_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    p11kms_fuzz_run(argc, argv, fuzzKMSRequests)
}

import FuzzDriver
import KeyService

/// The ciphertext envelope (KMS v2 and v1 Decrypt input, and what the audit reads from etcd). Any bytes either
/// parse or are refused with KMSError; a parsed envelope serialises back to exactly the input.
func fuzzEnvelope(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: count))
    if let envelope = try? Envelope(parsing: bytes) {
        precondition(envelope.serialized() == bytes, "a parsed envelope does not serialise back to its input")
        precondition(envelope.iv.count == Envelope.ivLength && envelope.sealed.count > Envelope.tagLength)
        precondition(envelope.header == Array(bytes.prefix(Envelope.headerLength)))
    }
    return 0
}

@_cdecl("FuzzEnvelope_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    p11kms_fuzz_run(argc, argv, fuzzEnvelope)
}

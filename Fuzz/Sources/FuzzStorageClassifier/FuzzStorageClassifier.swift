import EtcdAudit
import Foundation
import FuzzDriver

/// The storage classifier `p11kms audit` runs on every value it reads from etcd (anyone who can write a Secret
/// chooses those bytes). Any bytes classify without crashing; the first byte picks the provider name, so names with
/// a ':' (allowed for KMS v1) are covered too.
let classifiers = [StorageClassifier(provider: "p11kms"), StorageClassifier(provider: "kms:v1:name"), StorageClassifier(provider: "")]

func fuzzStorageClassifier(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard count > 0, let data else { return 0 }
    let classifier = classifiers[Int(data[0]) % classifiers.count]
    let value = Data(UnsafeBufferPointer(start: data + 1, count: count - 1))
    switch classifier.format(of: value) {
    case .kmsV2(_, let envelope):
        _ = envelope.dek.ciphertext.count
    case .plaintext, .kmsV2Undecodable, .kmsV1, .local, .unrecognized:
        break
    }
    return 0
}

@_cdecl("FuzzStorageClassifier_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    p11kms_fuzz_run(argc, argv, fuzzStorageClassifier)
}

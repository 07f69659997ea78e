import EtcdAudit
import Foundation
import FuzzDriver

/// The audit JSON that `destroy --audit-json` reads before deleting a key for good: any bytes parse into a proof
/// or are refused with AuditProofError; a parsed proof's rules run without crashing. Built only when the tree has
/// `AuditProof` (Sources/EtcdAudit/AuditProof.swift).
func fuzzAuditProof(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Data(UnsafeBufferPointer(start: data, count: count))
    guard let proof = try? AuditProof.parse(bytes) else { return 0 }
    let keyID = proof.rows.first?.key_id ?? "p11kms-000102030405060708090a0b0c0d0e0f"
    _ = proof.refusals(keyID: keyID, now: Date(timeIntervalSince1970: 1_800_000_000), maxAge: 3600)
    _ = proof.refusals(keyID: "p11kms-ffffffffffffffffffffffffffffffff", now: Date(timeIntervalSince1970: 0), maxAge: 0, etcdPrefix: "")
    return 0
}

@_cdecl("FuzzAuditProof_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    p11kms_fuzz_run(argc, argv, fuzzAuditProof)
}

import CPKCS11
import PKCS11
import Synchronization

/// Counts Encrypts per root key persistently, in the token: AES-GCM with random 96-bit IVs must stay below 2^32
/// encryptions per key.
///
/// Each key has a `CKO_DATA` object (`CKA_TOKEN` and `CKA_PRIVATE` true, label `p11kms-budget-<key_id>`) whose value
/// is the number of encryptions *reserved* under the key, in decimal (a new object replaces it at each reservation;
/// if two are left, the higher counts). Encryptions are reserved in blocks before they
/// are made: an Encrypt that finds its key's block used up writes the next reservation to the token first, so a
/// crash (kill -9, power loss) loses at most the unused rest of one block and the count never goes down. A process
/// that starts counts everything reserved so far as used. Every Encrypt of an `EnvelopeService` counts, canaries
/// included, and so is a new key's self-test (`countOne`). At the budget, Encrypt fails with `failedPrecondition` naming `p11kms rotate`; Decrypt never counts.
public final class EncryptionBudget: Sendable {
    public static let defaultBudget: UInt64 = 1 << 32
    public static let labelPrefix = "p11kms-budget-"

    public let budget: UInt64
    /// Encryptions reserved per token write: 4096, or less for small budgets (at most 1/256 of the budget).
    public let block: UInt64
    private let token: Token
    private let onReserve: @Sendable (String, UInt64) -> Void

    private struct Count { var used: UInt64; var reserved: UInt64 }
    private let counts = Mutex<[RootKeyID: Count]>([:])

    public init(token: Token, budget: UInt64 = EncryptionBudget.defaultBudget,
                onReserve: @escaping @Sendable (_ keyID: String, _ reserved: UInt64) -> Void = { _, _ in }) {
        self.token = token
        self.budget = max(1, budget)
        self.block = max(1, min(4096, self.budget / 256))
        self.onReserve = onReserve
    }

    /// Counts one Encrypt under `id`; reserves the next block in the token when needed. Throws at the budget.
    public func consume(_ id: RootKeyID) throws(KMSError) {
        try counts.withLock { (counts) throws(KMSError) in
            var count = counts[id] ?? Count(used: 0, reserved: 0)
            if counts[id] == nil {
                let stored = try read(id)
                count = Count(used: stored, reserved: stored)
            }
            guard count.used < budget else {
                counts[id] = count
                throw KMSError(.failedPrecondition, "run 'p11kms rotate': root key \(id.keyID) has made all \(budget) encryptions of its budget")
            }
            if count.used == count.reserved {
                let next = min(count.used + block, budget)
                try write(id, reserved: next)
                count.reserved = next
                onReserve(id.keyID, next)
            }
            count.used += 1
            counts[id] = count
        }
    }

    /// The share of the budget `id` has used in this process's view (reserved counts as used after a restart).
    public func usedFraction(_ id: RootKeyID) -> Double? {
        counts.withLock { $0[id].map { Double($0.used) / Double(budget) } }
    }

    /// "root key … has used 99 % of its encryption budget", when it has; for Status.
    public func warning(for id: RootKeyID) -> String? {
        guard let fraction = usedFraction(id), fraction >= 0.99 else { return nil }
        return "root key \(id.keyID) has used \(Int(fraction * 100)) % of its encryption budget (\(budget)); run 'p11kms rotate'"
    }

    /// Every key's reserved count as stored in the token.
    public static func readAll(_ token: Token) throws(KMSError) -> [String: UInt64] {
        do throws(PKCS11Error) {
            return try token.withSession { (session) throws(PKCS11Error) -> [String: UInt64] in
                var out: [String: UInt64] = [:]
                for object in try session.findObjects(dataTemplate) {
                    guard let label = try session.attribute(CKA_LABEL, of: object).map({ String(decoding: $0, as: UTF8.self) }),
                          label.hasPrefix(labelPrefix), let value = try session.attribute(CKA_VALUE, of: object),
                          let count = UInt64(String(decoding: value, as: UTF8.self)) else { continue }
                    out[String(label.dropFirst(labelPrefix.count))] = max(out[String(label.dropFirst(labelPrefix.count))] ?? 0, count)
                }
                return out
            }
        } catch {
            throw KMSError.token(error)
        }
    }

    /// Counts one encryption made outside an `EnvelopeService` (a new key's self-test in `rotate` and `init`).
    public static func countOne(_ token: Token, _ id: RootKeyID) throws(KMSError) {
        let counter = EncryptionBudget(token: token)
        try counter.write(id, reserved: try counter.read(id) + 1)
    }

    static let dataTemplate: [Attribute] = [.ulong(CKA_CLASS, CK_ULONG(CKO_DATA)), .bool(CKA_TOKEN, true)]

    private func read(_ id: RootKeyID) throws(KMSError) -> UInt64 {
        do throws(PKCS11Error) {
            return try token.withSession { (session) throws(PKCS11Error) -> UInt64 in
                var highest: UInt64 = 0
                for object in try session.findObjects(EncryptionBudget.dataTemplate + [.string(CKA_LABEL, EncryptionBudget.labelPrefix + id.keyID)]) {
                    if let value = try session.attribute(CKA_VALUE, of: object), let count = UInt64(String(decoding: value, as: UTF8.self)) {
                        highest = max(highest, count)
                    }
                }
                return highest
            }
        } catch {
            throw KMSError.token(error)
        }
    }

    private func write(_ id: RootKeyID, reserved: UInt64) throws(KMSError) {
        let label = EncryptionBudget.labelPrefix + id.keyID
        let value = Array(String(reserved).utf8)
        do throws(PKCS11Error) {
            // A data object's CKA_VALUE cannot be changed (SoftHSM: CKR_ATTRIBUTE_READ_ONLY), so the new count is a
            // new object and the older ones are deleted after it exists: killed in between, both are there and the
            // higher one counts.
            try token.withSession { (session) throws(PKCS11Error) in
                let older = try session.findObjects(EncryptionBudget.dataTemplate + [.string(CKA_LABEL, label)])
                let created = try session.createObject(EncryptionBudget.dataTemplate + [
                    .bool(CKA_PRIVATE, true), .string(CKA_LABEL, label), .string(CKA_APPLICATION, "p11kms"),
                    .bytes(CKA_VALUE, value),
                ])
                for object in older where object != created { try? session.destroyObject(object) }
            }
        } catch {
            throw KMSError.token(error)
        }
    }
}

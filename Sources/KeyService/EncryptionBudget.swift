import PKCS11
import Lifecycle

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
    private let counts = ConditionLock<[RootKeyID: Count]>([:])

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
        try KMSError.mapping { () throws(PKCS11Error) -> [String: UInt64] in
            try token.withObjects { (objects) throws(PKCS11Error) -> [String: UInt64] in
                var out: [String: UInt64] = [:]
                for object in try objects.dataObjects(labelPrefix: labelPrefix) {
                    guard let count = count(object) else { continue }
                    let keyID = String(object.label.dropFirst(labelPrefix.count))
                    out[keyID] = max(out[keyID] ?? 0, count)
                }
                return out
            }
        }
    }

    /// Counts one encryption made outside an `EnvelopeService` (a new key's self-test in `rotate` and `init`).
    public static func countOne(_ token: Token, _ id: RootKeyID) throws(KMSError) {
        let counter = EncryptionBudget(token: token)
        try counter.write(id, reserved: try counter.read(id) + 1)
    }

    private static func count(_ object: DataObject) -> UInt64? {
        UInt64(String(decoding: object.value, as: UTF8.self))
    }

    private func read(_ id: RootKeyID) throws(KMSError) -> UInt64 {
        try KMSError.mapping { () throws(PKCS11Error) -> UInt64 in
            try token.withObjects { (objects) throws(PKCS11Error) -> UInt64 in
                try objects.dataObjects(labelPrefix: EncryptionBudget.labelPrefix + id.keyID, exact: true)
                    .compactMap(EncryptionBudget.count).max() ?? 0
            }
        }
    }

    private func write(_ id: RootKeyID, reserved: UInt64) throws(KMSError) {
        let label = EncryptionBudget.labelPrefix + id.keyID
        // A data object's value cannot be changed, so the new count is a new object and the older ones are deleted
        // after it exists: killed in between, both are there and the higher one counts.
        try KMSError.mapping { () throws(PKCS11Error) in
            try token.withObjects { (objects) throws(PKCS11Error) in
                let older = try objects.dataObjects(labelPrefix: label, exact: true)
                try objects.createDataObject(label: label, application: "p11kms", value: Array(String(reserved).utf8))
                for object in older { try? objects.destroy(object) }
            }
        }
    }
}

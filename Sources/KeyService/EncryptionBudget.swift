import PKCS11
import Lifecycle

/// Counts Encrypts per root key persistently, in the token: AES-GCM with random 96-bit IVs must stay below 2^32
/// encryptions per key.
///
/// Each key has a `CKO_DATA` object (`CKA_TOKEN` and `CKA_PRIVATE` true, label `p11kms-budget-<key_id>`) whose value
/// is the number of encryptions *reserved* under the key, in decimal (a new object replaces it at each reservation;
/// if two are left, the higher counts). Encryptions are reserved in blocks before they
/// are made (see `consume`: the next reservation is written ahead of need, outside the lock), so a crash (kill -9,
/// power loss) loses at most one block and the count never goes down. A process
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

    private struct Count {
        var used: UInt64
        var reserved: UInt64
        /// A reservation is being written to the token (by one caller, outside the lock).
        var reserving = false
    }
    private let counts = ConditionLock<[RootKeyID: Count]>([:])

    public init(token: Token, budget: UInt64 = EncryptionBudget.defaultBudget,
                onReserve: @escaping @Sendable (_ keyID: String, _ reserved: UInt64) -> Void = { _, _ in }) {
        self.token = token
        self.budget = max(1, budget)
        self.block = max(1, min(4096, self.budget / 256))
        self.onReserve = onReserve
    }

    /// What one call of `consume` does after taking the lock.
    private enum Step {
        /// Counted within the reservation.
        case counted
        /// Counted; the reservation runs low, so this caller writes the next one (`reserved`) ahead of need.
        case countedReserveAhead(UInt64)
        /// Nothing left in the reservation: this caller writes the next one, then counts.
        case reserveFirst(UInt64)
        case exhausted
    }

    /// Counts one Encrypt under `id`; reserves the next block in the token when needed. Throws at the budget, and
    /// with `deadlineExceeded` when `deadline` passes while another caller still writes the reservation this one needs.
    ///
    /// The token write is made outside the lock, by one caller at a time, and (for blocks of more than one) ahead
    /// of need: once at most half a block is left, the caller that notices writes `used + block` while the others go on counting within the old
    /// reservation (a write used to stall every Encrypt for milliseconds). The reservation in the token is never
    /// below the count, and at most one block above it, so a crash still loses at most a block; the price is a
    /// write every half block to a whole block.
    public func consume(_ id: RootKeyID, deadline: ContinuousClock.Instant? = nil) throws(KMSError) {
        if counts.withLock({ $0[id] == nil }) {
            let stored = try read(id)
            counts.withLock { counts in
                if counts[id] == nil { counts[id] = Count(used: stored, reserved: stored) }
            }
        }
        while true {
            // A caller waits only while another one writes the reservation it needs, at most until its deadline.
            guard let step = counts.wait(until: deadline, { (counts: inout [RootKeyID: Count]) -> Step? in
                guard var count = counts[id] else { return .exhausted }
                defer { counts[id] = count }
                if count.used >= budget { return .exhausted }
                if count.used < count.reserved {
                    count.used += 1
                    guard block > 1, !count.reserving, count.reserved < budget, count.reserved - count.used <= block / 2 else {
                        return .counted
                    }
                    count.reserving = true
                    return .countedReserveAhead(min(count.used + block, budget))
                }
                if count.reserving { return nil }
                count.reserving = true
                return .reserveFirst(min(count.used + block, budget))
            }) else {
                throw KMSError(.deadlineExceeded, "not started: the encryption budget's next reservation for root key \(id.keyID) is still being written to the token")
            }
            switch step {
            case .counted:
                return
            case .exhausted:
                throw KMSError(.failedPrecondition, "run 'p11kms rotate': root key \(id.keyID) has made all \(budget) encryptions of its budget")
            case .countedReserveAhead(let next):
                // This Encrypt is already covered; a failed write is tried again by the next caller.
                try? reserve(id, next)
                return
            case .reserveFirst(let next):
                try reserve(id, next)
            }
        }
    }

    /// Writes the reservation `next` for `id` (the caller set `reserving`), records it, and wakes waiters.
    private func reserve(_ id: RootKeyID, _ next: UInt64) throws(KMSError) {
        do throws(KMSError) {
            try write(id, reserved: next)
        } catch {
            counts.withLock { $0[id]?.reserving = false }
            counts.signalAll()
            throw error
        }
        counts.withLock { counts in
            if var count = counts[id] {
                count.reserved = max(count.reserved, next)
                count.reserving = false
                counts[id] = count
            }
        }
        counts.signalAll()
        onReserve(id.keyID, next)
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

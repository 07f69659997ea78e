import PKCS11
import Lifecycle

/// The root keys in the token and which one is current. The token is the only state: every process on the same
/// token computes the same current key from the keys' labels and `CKA_DECRYPT`.
public final class KeyRing: Sendable {
    public let token: Token
    /// The keys as last read, replaced whole at each refresh: a reader holds the lock only to take a reference
    /// (every Encrypt and Decrypt reads it). A pthread lock (`ConditionLock`), not `Mutex`: on Linux a contended
    /// `Mutex` is a priority-inheritance futex that convoys with more threads than cores (measured: 12.7k
    /// in-process envelope pairs/s at 16 threads with `Mutex` on the hot paths, 42-54k with pthread locks).
    private let state = ConditionLock(Snapshot(keys: [], invalid: [], loaded: false))

    private final class Snapshot: Sendable {
        let keys: [RootKey]
        let invalid: [InvalidRootKey]
        let loaded: Bool
        let current: RootKey?
        let byID: [RootKeyID: RootKey]

        init(keys: [RootKey], invalid: [InvalidRootKey], loaded: Bool) {
            self.keys = keys
            self.invalid = invalid
            self.loaded = loaded
            current = keys.last { $0.state == .current }
            byID = Dictionary(keys.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        }
    }

    private var snapshot: Snapshot { state.withLock { $0 } }

    public init(token: Token) {
        self.token = token
    }

    /// The keys as last read from the token, oldest first.
    public var keys: [RootKey] { snapshot.keys }

    /// The current key as last read from the token.
    public var current: RootKey? { snapshot.current }

    public func key(_ id: RootKeyID) -> RootKey? { snapshot.byID[id] }

    /// Objects labelled like root keys that are never used (see `InvalidRootKey`), as last read from the token.
    public var invalidKeys: [InvalidRootKey] { snapshot.invalid }

    /// The invalid object with `id`, if any.
    public func invalidKey(_ id: RootKeyID) -> InvalidRootKey? { snapshot.invalid.first { $0.id == id } }

    /// Reads the keys from the token again. Returns whether the list changed. Keys are never deleted, so when known
    /// keys are missing the token is first confirmed present: in a storage outage SoftHSM finds no objects, and the
    /// keys must not be forgotten (a later decrypt would call its ciphertext invalid instead of unavailable).
    @discardableResult
    public func refresh() throws(PKCS11Error) -> Bool {
        let known = Set(snapshot.keys.map(\.id))
        let found = try token.withObjects { (objects) throws(PKCS11Error) -> Scan in
            let found = try KeyRing.readKeys(objects)
            if !known.isSubset(of: found.keys.map(\.key.id)) { try objects.confirmPresent() }
            // The token object is the authority: only the current key runs with a session copy, so the copy of a
            // key that was rotated away (and may be retired next), destroyed or is gone stops here.
            objects.remember(usable: found.keys.map(\.object), unusable: found.invalid.map(\.object),
                             keepCopiesOf: Set(found.keys.filter { $0.key.state == .current }.map(\.key.id.bytes)))
            return found
        }
        let keys = found.keys.map(\.key)
        let invalid = found.invalid.map(\.key)
        let next = Snapshot(keys: keys, invalid: invalid, loaded: true)
        return state.withLock { state in
            let changed = keys != state.keys || invalid != state.invalid || !state.loaded
            state = next
            return changed
        }
    }

    /// The root-key objects of the token: the usable keys with their state, oldest generation first, and the
    /// objects labelled like root keys that the token does not describe as one (see `InvalidRootKey`).
    struct Scan {
        var keys: [(key: RootKey, object: SecretKeyObject)]
        var invalid: [(key: InvalidRootKey, object: SecretKeyObject)]

        /// The highest generation of any root-key object, usable or not: a new key always gets a higher one.
        var highestGeneration: Int {
            max(keys.map(\.key.generation).max() ?? 0, invalid.map(\.key.generation).max() ?? 0)
        }

        /// The usable key `id`, or an error naming why there is none.
        func usable(_ id: RootKeyID) throws(KMSError) -> (key: RootKey, object: SecretKeyObject) {
            if let found = keys.first(where: { $0.key.id == id }) { return found }
            if let bad = invalid.first(where: { $0.key.id == id }) {
                throw KMSError(.failedPrecondition, "\(bad.key); it is never used")
            }
            throw KMSError.invalid("no root key \(id.keyID) in the token")
        }
    }

    /// Every object labelled like a p11kms root key, sorted into usable keys (with their state) and invalid ones.
    /// A key is usable only if the token says it is AES-256, sensitive and not extractable, and no other root-key
    /// object has its `CKA_ID`; the current key is the newest usable key that is neither pending nor retired.
    static func readKeys(_ objects: KeyObjects) throws(PKCS11Error) -> Scan {
        struct Found {
            var id: RootKeyID?; var generation: Int; var created: Int; var pending: Bool
            var problems: [String]; var object: SecretKeyObject
        }
        var found: [Found] = []
        var idCounts: [RootKeyID: Int] = [:]
        for object in try objects.secretKeys(labelled: { RootKey.parseLabel($0) != nil }) {
            guard let parsed = RootKey.parseLabel(object.label) else { continue }
            var problems = object.problems
            let id = object.id.flatMap(RootKeyID.init(bytes:))
            if let id { idCounts[id, default: 0] += 1 } else { problems.append("CKA_ID is not \(RootKeyID.byteCount) bytes") }
            found.append(Found(id: id, generation: parsed.generation, created: parsed.createdAt, pending: parsed.pending,
                               problems: problems, object: object))
        }
        for index in found.indices {
            if let id = found[index].id, idCounts[id, default: 0] > 1 {
                found[index].problems.append("CKA_ID shared with another root key object")
            }
        }
        let invalid = found.filter { !$0.problems.isEmpty }.sorted { ($0.generation, $0.object.label) < ($1.generation, $1.object.label) }.map {
            (key: InvalidRootKey(label: $0.object.label, id: $0.id, generation: $0.generation, createdAt: $0.created,
                                 problems: $0.problems),
             object: $0.object)
        }
        var usable = found.filter { $0.problems.isEmpty }
        usable.sort { ($0.generation, $0.id!) < ($1.generation, $1.id!) }
        let currentIndex = usable.lastIndex { !$0.pending && $0.object.decryptEnabled }
        let keys = usable.enumerated().map { index, f in
            let state: RootKeyState
            if f.pending {
                state = .pending
            } else if !f.object.decryptEnabled {
                state = .retired
            } else {
                state = index == currentIndex ? .current : .active
            }
            return (key: RootKey(id: f.id!, label: f.object.label, generation: f.generation, createdAt: f.created, state: state),
                    object: f.object)
        }
        return Scan(keys: keys, invalid: invalid)
    }
}

import CPKCS11
import PKCS11
import Synchronization

/// The root keys in the token and which one is current. The token is the only state: every process on the same
/// token computes the same current key from the keys' labels and `CKA_DECRYPT`.
public final class KeyRing: Sendable {
    public let token: Token
    private let state = Mutex(State())

    private struct State {
        var keys: [RootKey] = []
        var invalid: [InvalidRootKey] = []
        var loaded = false
    }

    public init(token: Token) {
        self.token = token
    }

    /// The keys as last read from the token, oldest first.
    public var keys: [RootKey] { state.withLock { $0.keys } }

    /// The current key as last read from the token.
    public var current: RootKey? { state.withLock { $0.keys.last { $0.state == .current } } }

    public func key(_ id: RootKeyID) -> RootKey? { state.withLock { $0.keys.first { $0.id == id } } }

    /// Objects labelled like root keys that are never used (see `InvalidRootKey`), as last read from the token.
    public var invalidKeys: [InvalidRootKey] { state.withLock { $0.invalid } }

    /// The invalid object with `id`, if any.
    public func invalidKey(_ id: RootKeyID) -> InvalidRootKey? { state.withLock { $0.invalid.first { $0.id == id } } }

    /// Reads the keys from the token again. Returns whether the list changed. Keys are never deleted, so when known
    /// keys are missing the token is first confirmed present: in a storage outage SoftHSM finds no objects, and the
    /// keys must not be forgotten (a later decrypt would call its ciphertext invalid instead of unavailable).
    @discardableResult
    public func refresh() throws(PKCS11Error) -> Bool {
        let known = state.withLock { Set($0.keys.map(\.id)) }
        let (found, epoch) = try token.withSession { (session) throws(PKCS11Error) in
            let epoch = token.handleEpoch
            let found = try KeyRing.readKeys(session)
            if !known.isSubset(of: found.keys.map(\.key.id)) { try token.confirmPresent(session) }
            // The token object is the authority: only the current key runs with a session copy, so the copy of a
            // key that was rotated away (and may be retired next), destroyed or is gone stops here.
            token.sessionKeyCopies.keep(only: Set(found.keys.filter { $0.key.state == .current }.map(\.key.id.bytes)), epoch: epoch)
            return (found, epoch)
        }
        token.keyHandles.store(found.keys.map { ($0.key.id.bytes, $0.handle) }, epoch: epoch)
        for bad in found.invalid { if let id = bad.key.id { token.keyHandles.forget(id.bytes) } }
        return state.withLock { state in
            let keys = found.keys.map(\.key)
            let invalid = found.invalid.map(\.key)
            let changed = keys != state.keys || invalid != state.invalid || !state.loaded
            state.keys = keys
            state.invalid = invalid
            state.loaded = true
            return changed
        }
    }

    /// The object handle of `id` (`Token.keyHandle`: cached per handle epoch, attributes checked on lookup).
    /// Call it inside `token.withSession`.
    public func handle(of id: RootKeyID, in session: Session) throws(PKCS11Error) -> CK_OBJECT_HANDLE? {
        try token.keyHandle(id: id.bytes, name: id.keyID, in: session)
    }

    /// Forgets a cached handle.
    public func forgetHandle(of id: RootKeyID) {
        token.keyHandles.forget(id.bytes)
    }

    static let aesKeyTemplate: [Attribute] = [
        .ulong(CKA_CLASS, CK_ULONG(CKO_SECRET_KEY)),
        .ulong(CKA_KEY_TYPE, CK_ULONG(CKK_AES)),
    ]

    /// Every secret key, whatever its type: an object labelled like a root key but of another type is reported.
    static var secretKeyTemplate: [Attribute] { Token.secretKeyTemplate }

    /// The root-key objects of the token: the usable keys with their state, oldest generation first, and the
    /// objects labelled like root keys that the token does not describe as one (see `InvalidRootKey`).
    struct Scan {
        var keys: [(key: RootKey, handle: CK_OBJECT_HANDLE)]
        var invalid: [(key: InvalidRootKey, handle: CK_OBJECT_HANDLE)]

        /// The highest generation of any root-key object, usable or not: a new key always gets a higher one.
        var highestGeneration: Int {
            max(keys.map(\.key.generation).max() ?? 0, invalid.map(\.key.generation).max() ?? 0)
        }

        /// The usable key `id`, or an error naming why there is none.
        func usable(_ id: RootKeyID) throws(KMSError) -> (key: RootKey, handle: CK_OBJECT_HANDLE) {
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
    static func readKeys(_ session: Session) throws(PKCS11Error) -> Scan {
        struct Found {
            var id: RootKeyID?; var label: String; var generation: Int; var created: Int; var pending: Bool
            var decrypt: Bool; var problems: [String]; var handle: CK_OBJECT_HANDLE
        }
        var found: [Found] = []
        var idCounts: [RootKeyID: Int] = [:]
        for object in try session.findObjects(secretKeyTemplate) {
            guard let labelBytes = try session.attribute(CKA_LABEL, of: object) else { continue }
            let label = String(decoding: labelBytes, as: UTF8.self)
            guard let parsed = RootKey.parseLabel(label) else { continue }
            var problems = try Token.aes256Problems(of: object, in: session)
            let id = try session.attribute(CKA_ID, of: object).flatMap(RootKeyID.init(bytes:))
            if let id { idCounts[id, default: 0] += 1 } else { problems.append("CKA_ID is not \(RootKeyID.byteCount) bytes") }
            let decrypt = try session.boolAttribute(CKA_DECRYPT, of: object) ?? false
            found.append(Found(id: id, label: label, generation: parsed.generation, created: parsed.createdAt,
                               pending: parsed.pending, decrypt: decrypt, problems: problems, handle: object))
        }
        for index in found.indices {
            if let id = found[index].id, idCounts[id, default: 0] > 1 {
                found[index].problems.append("CKA_ID shared with another root key object")
            }
        }
        let invalid = found.filter { !$0.problems.isEmpty }.sorted { ($0.generation, $0.label) < ($1.generation, $1.label) }.map {
            (key: InvalidRootKey(label: $0.label, id: $0.id, generation: $0.generation, createdAt: $0.created, problems: $0.problems),
             handle: $0.handle)
        }
        var usable = found.filter { $0.problems.isEmpty }
        usable.sort { ($0.generation, $0.id!) < ($1.generation, $1.id!) }
        let currentIndex = usable.lastIndex { !$0.pending && $0.decrypt }
        let keys = usable.enumerated().map { index, f in
            let state: RootKeyState
            if f.pending {
                state = .pending
            } else if !f.decrypt {
                state = .retired
            } else {
                state = index == currentIndex ? .current : .active
            }
            return (key: RootKey(id: f.id!, label: f.label, generation: f.generation, createdAt: f.created, state: state), handle: f.handle)
        }
        return Scan(keys: keys, invalid: invalid)
    }
}

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
        var handles: [RootKeyID: (epoch: Token.HandleEpoch, handle: CK_OBJECT_HANDLE)] = [:]
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

    /// Reads the keys from the token again. Returns whether the list changed. Keys are never deleted, so when known
    /// keys are missing the token is first confirmed present: in a storage outage SoftHSM finds no objects, and the
    /// keys must not be forgotten (a later decrypt would call its ciphertext invalid instead of unavailable).
    @discardableResult
    public func refresh() throws(PKCS11Error) -> Bool {
        let known = state.withLock { Set($0.keys.map(\.id)) }
        let (found, epoch) = try token.withSession { (session) throws(PKCS11Error) in
            let epoch = token.handleEpoch
            let found = try KeyRing.readKeys(session)
            if !known.isSubset(of: found.map(\.key.id)) { try token.confirmPresent(session) }
            return (found, epoch)
        }
        return state.withLock { state in
            let keys = found.map(\.key)
            let changed = keys != state.keys || !state.loaded
            state.keys = keys
            state.loaded = true
            for (key, handle) in found { state.handles[key.id] = (epoch, handle) }
            return changed
        }
    }

    /// The object handle of `id`, looked up in the token when not cached for the token's current handle epoch
    /// (module generation and login). Call it inside `token.withSession`.
    public func handle(of id: RootKeyID, in session: Session) throws(PKCS11Error) -> CK_OBJECT_HANDLE? {
        let epoch = token.handleEpoch
        if let cached = state.withLock({ $0.handles[id] }), cached.epoch == epoch {
            return cached.handle
        }
        let objects = try session.findObjects(KeyRing.aesKeyTemplate + [.bytes(CKA_ID, id.bytes)])
        guard let handle = objects.first else { return nil }
        state.withLock { $0.handles[id] = (epoch, handle) }
        return handle
    }

    /// Forgets a cached handle (after `CKR_KEY_HANDLE_INVALID`).
    public func forgetHandle(of id: RootKeyID) {
        _ = state.withLock { $0.handles.removeValue(forKey: id) }
    }

    static let aesKeyTemplate: [Attribute] = [
        .ulong(CKA_CLASS, CK_ULONG(CKO_SECRET_KEY)),
        .ulong(CKA_KEY_TYPE, CK_ULONG(CKK_AES)),
    ]

    /// Every p11kms root key in the token with its state, oldest generation first.
    static func readKeys(_ session: Session) throws(PKCS11Error) -> [(key: RootKey, handle: CK_OBJECT_HANDLE)] {
        struct Found { var id: RootKeyID; var label: String; var generation: Int; var created: Int; var pending: Bool; var decrypt: Bool; var handle: CK_OBJECT_HANDLE }
        var found: [Found] = []
        var seen = Set<RootKeyID>()
        for object in try session.findObjects(aesKeyTemplate) {
            guard let labelBytes = try session.attribute(CKA_LABEL, of: object) else { continue }
            let label = String(decoding: labelBytes, as: UTF8.self)
            guard let parsed = RootKey.parseLabel(label),
                  let idBytes = try session.attribute(CKA_ID, of: object),
                  let id = RootKeyID(bytes: idBytes), !seen.contains(id) else { continue }
            seen.insert(id)
            let decrypt = try session.boolAttribute(CKA_DECRYPT, of: object) ?? false
            found.append(Found(id: id, label: label, generation: parsed.generation, created: parsed.createdAt,
                               pending: parsed.pending, decrypt: decrypt, handle: object))
        }
        found.sort { ($0.generation, $0.id) < ($1.generation, $1.id) }
        let currentIndex = found.lastIndex { !$0.pending && $0.decrypt }
        return found.enumerated().map { index, f in
            let state: RootKeyState
            if f.pending {
                state = .pending
            } else if !f.decrypt {
                state = .retired
            } else {
                state = index == currentIndex ? .current : .active
            }
            return (RootKey(id: f.id, label: f.label, generation: f.generation, createdAt: f.created, state: state), f.handle)
        }
    }
}

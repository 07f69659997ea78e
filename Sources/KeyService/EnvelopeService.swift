import PKCS11

/// Wraps and unwraps data keys with AES-256-GCM inside the token under the root keys of a `KeyRing`.
/// Knows nothing of protobuf or sockets; every method is synchronous and blocks on the token, so callers run it on
/// threads of their own, never on Swift's cooperative pool.
public final class EnvelopeService: Sendable {
    /// KMS v2: kube-apiserver rejects ciphertexts over 1024 bytes.
    public static let maxCiphertextV2 = 1024
    /// Largest plaintext accepted for KMS v2.
    public static var maxPlaintextV2: Int { maxCiphertextV2 - Envelope.overhead }

    public let keyRing: KeyRing
    public var token: Token { keyRing.token }
    /// Canary round trips run to tell a forged ciphertext from a failing token.
    private let canaryGate = FailureGate()
    /// Re-reads of the key list triggered by a request (an unknown key_id, a key the token refuses).
    private let refreshGate = FailureGate()

    /// Counts every Encrypt per key in the token (nil: not counted).
    public let budget: EncryptionBudget?

    public init(keyRing: KeyRing, budget: EncryptionBudget? = nil) {
        self.keyRing = keyRing
        self.budget = budget
    }

    /// Encrypts under the current root key with a fresh random IV; the key identity is bound as AAD.
    /// A call that cannot get a session before `deadline` fails with `deadlineExceeded` and never reaches the token.
    public func encrypt(_ plaintext: [UInt8], maxCiphertext: Int = EnvelopeService.maxCiphertextV2,
                        deadline: ContinuousClock.Instant? = nil) throws(KMSError) -> (ciphertext: [UInt8], key: RootKey) {
        guard !plaintext.isEmpty else { throw .invalid("plaintext is empty") }
        let limit = maxCiphertext - Envelope.overhead
        guard plaintext.count <= limit else {
            throw .invalid("plaintext is \(plaintext.count) bytes; at most \(limit) are accepted")
        }
        guard let key = keyRing.current else {
            throw KMSError(.unavailable, "the token holds no current root key (run 'p11kms init')")
        }
        try budget?.consume(key.id, deadline: deadline)
        let iv = SecureRandom.bytes(Envelope.ivLength)
        let header = Envelope.header(for: key.id)
        let sealed = try KMSError.mapping { () throws(PKCS11Error) in
            try token.encryptAESGCM(reference(key), iv: iv, aad: header, plaintext: plaintext, deadline: deadline)
        }
        return (Envelope(keyID: key.id, iv: iv, sealed: sealed).serialized(), key)
    }

    /// Decrypts a ciphertext returned by `encrypt`. `expectedKeyID` (KMS v2's key_id) must name the same key as the
    /// ciphertext; KMS v1 passes nil and relies on the identity embedded in the ciphertext.
    ///
    /// A ciphertext that fails authentication costs at most two token operations; whether the token itself still
    /// works is then answered by a canary that runs at most once a second, whatever the number of such requests.
    public func decrypt(_ ciphertext: [UInt8], expectedKeyID: String?,
                        deadline: ContinuousClock.Instant? = nil) throws(KMSError) -> (plaintext: [UInt8], key: RootKey) {
        if let expectedKeyID {
            guard !expectedKeyID.isEmpty else { throw .invalid("key_id is empty") }
            guard expectedKeyID.utf8.count <= 1024 else { throw .invalid("key_id is longer than 1024 bytes") }
        }
        let envelope = try Envelope(parsing: ciphertext)
        if let expectedKeyID, expectedKeyID != envelope.keyID.keyID {
            throw .invalid("key_id does not match the key that produced the ciphertext")
        }
        let key = try knownKey(envelope.keyID)
        // A retired key is refused by the token itself (CKA_DECRYPT is cleared), which is the authority: the cached
        // state may lag behind a 'p11kms restore' by up to one refresh interval. A pending key (staged or left by an
        // interrupted rotation) was verified before anything could use it and may decrypt: during a staged rotation
        // across token copies, another node may already have made it current.
        do throws(KMSError) {
            return (try open(envelope, key: key, deadline: deadline), key)
        } catch let error where error.code != .invalidArgument {
            return (try recoverDecryptFailure(error, envelope: envelope, key: key, deadline: deadline), key)
        }
    }

    /// A real AES-GCM round trip under the current key: true when the token is usable. Its result also answers, for
    /// a second, whether a failed decryption was the token's fault (see `decrypt`).
    public func canary() throws(KMSError) {
        do throws(KMSError) {
            try canaryRoundTrip()
            canaryGate.record(true)
        } catch {
            if error.code == .unavailable || error.code == .internal { canaryGate.record(false) }
            throw error
        }
    }

    private func canaryRoundTrip() throws(KMSError) {
        // The probe is a data key in all but name: both copies this function owns are zeroed when it returns.
        var probe = SecureRandom.bytes(32)
        defer { Zeroize.bytes(&probe) }
        let (ciphertext, key) = try encrypt(probe)
        // Decrypted without `decrypt`'s failure analysis, which itself relies on the canary.
        var opened = try open(try Envelope(parsing: ciphertext), key: key, deadline: nil)
        defer { Zeroize.bytes(&opened) }
        guard opened == probe else { throw KMSError(.internal, "canary round trip returned different bytes") }
    }

    /// Re-reads the key list from the token; true when it changed.
    public func refreshKeys() throws(KMSError) -> Bool {
        return try KMSError.mapping { () throws(PKCS11Error) in try keyRing.refresh() }
    }

    /// One AES-GCM decryption in the token, no analysis of failures.
    private func open(_ envelope: Envelope, key: RootKey, deadline: ContinuousClock.Instant?) throws(KMSError) -> [UInt8] {
        try KMSError.mapping { () throws(PKCS11Error) in
            try token.decryptAESGCM(reference(key), iv: envelope.iv, aad: envelope.header,
                                    ciphertext: envelope.sealed, deadline: deadline)
        }
    }

    /// The token's answer, classified by `TokenFailure`: a retired key is `keyDisabled`, a GCM tag mismatch
    /// `authenticationFailed` (on SoftHSM the same `CKR_GENERAL_ERROR` as some token faults). A forged ciphertext
    /// and a passing token fault look alike, so the decryption is tried once more (riding through a transient fault: two token operations in
    /// all), and if that fails too the canary tells forged input (the token works) from a failing token; the canary
    /// runs at most once a second and one at a time, other callers use its last result. Returns the plaintext or
    /// throws.
    private func recoverDecryptFailure(_ error: KMSError, envelope: Envelope, key: RootKey,
                                       deadline: ContinuousClock.Instant?) throws(KMSError) -> [UInt8] {
        switch error.tokenFailure {
        case .keyDisabled?:
            _ = refreshGate.run { (try? keyRing.refresh()) != nil }
            throw KMSError(.failedPrecondition, "root key \(key.keyID) is retired; 'p11kms restore \(key.keyID)' re-enables it")
        case .authenticationFailed?:
            break
        default:
            throw error
        }
        if let plaintext = try? open(envelope, key: key, deadline: deadline) { return plaintext }
        let tokenWorks = canaryGate.recentResult(within: canaryGate.interval)
            ?? canaryGate.run { (try? canaryRoundTrip()) != nil }
            ?? true
        guard tokenWorks else {
            throw KMSError(.unavailable, "token unavailable: decryption failed and the token's self-test failed too")
        }
        throw .invalid("ciphertext failed authentication")
    }

    /// Looks a key up, re-reading the token (at most once a second, one at a time) when it is not known yet: another
    /// process may have rotated.
    private func knownKey(_ id: RootKeyID) throws(KMSError) -> RootKey {
        if let key = keyRing.key(id) { return key }
        if let bad = keyRing.invalidKey(id) { throw KMSError(.failedPrecondition, "\(bad); it is never used") }
        var failure: PKCS11Error?
        let refreshed = refreshGate.run {
            do throws(PKCS11Error) {
                _ = try keyRing.refresh()
                return true
            } catch {
                failure = error
                return false
            }
        }
        if let failure { throw KMSError.token(failure) }
        if refreshed != nil, let key = keyRing.key(id) { return key }
        if let bad = keyRing.invalidKey(id) { throw KMSError(.failedPrecondition, "\(bad); it is never used") }
        throw .invalid("unknown key_id \(id.keyID)")
    }

    /// The key as the token layer runs it (`Token.withKey`: lookup, stale-handle retries, and for the current key
    /// its session copy). Only the current key runs with a copy: every Encrypt and most Decrypts. Older keys run
    /// with their token objects, so that a retire (which needs a non-current key) is refused by the token at once.
    private func reference(_ key: RootKey) -> KeyReference {
        KeyReference(id: key.id.bytes, name: key.keyID, sessionCopy: key.state == .current)
    }
}

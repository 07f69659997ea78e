import CPKCS11
import KeyService
import PKCS11
import Testing
import TestSupport

func makeService(_ base: String) throws -> EnvelopeService {
    let token = try makeToken(base)
    let ring = KeyRing(token: token)
    _ = try ring.initialize()
    return EnvelopeService(keyRing: ring)
}

@Suite("Root keys and the envelope")
struct EnvelopeServiceTests {
    @Test("the root key is generated inside the token: sensitive, never extractable, value unreadable")
    func keyAttributes() throws {
        let service = try makeService("attrs")
        let key = try #require(service.keyRing.current)
        #expect(key.state == .current)
        #expect(key.generation == 1)
        #expect(key.keyID.hasPrefix("p11kms-") && key.keyID.utf8.count == 39)
        struct Seen { var bools: [CK_ATTRIBUTE_TYPE: Bool?] = [:]; var valueRead: PKCS11Error?; var clearSensitive: PKCS11Error?; var setExtractable: PKCS11Error? }
        let seen = try service.token.withSession { (session) throws(PKCS11Error) -> Seen in
            let found = try session.findObjects([.ulong(CK_ATTRIBUTE_TYPE(CKA_CLASS), CK_ULONG(CKO_SECRET_KEY)),
                                                 .bool(CK_ATTRIBUTE_TYPE(CKA_TOKEN), true), .bytes(CK_ATTRIBUTE_TYPE(CKA_ID), key.id.bytes)])
            guard found.count == 1, let handle = found.first else { throw PKCS11Error(.object("no key")) }
            var seen = Seen()
            for type in [CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_NEVER_EXTRACTABLE, CKA_ALWAYS_SENSITIVE,
                         CKA_LOCAL, CKA_WRAP, CKA_UNWRAP, CKA_ENCRYPT, CKA_DECRYPT] {
                seen.bools[CK_ATTRIBUTE_TYPE(type)] = try session.boolAttribute(CK_ATTRIBUTE_TYPE(type), of: handle)
            }
            do throws(PKCS11Error) { _ = try session.attribute(CK_ATTRIBUTE_TYPE(CKA_VALUE), of: handle) } catch { seen.valueRead = error }
            do throws(PKCS11Error) { try session.setAttributes([.bool(CK_ATTRIBUTE_TYPE(CKA_SENSITIVE), false)], of: handle) } catch { seen.clearSensitive = error }
            do throws(PKCS11Error) { try session.setAttributes([.bool(CK_ATTRIBUTE_TYPE(CKA_EXTRACTABLE), true)], of: handle) } catch { seen.setExtractable = error }
            return seen
        }
        for type in [CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, CKA_LOCAL, CKA_ENCRYPT, CKA_DECRYPT] {
            #expect(seen.bools[CK_ATTRIBUTE_TYPE(type)] == true, "attribute 0x\(String(type, radix: 16)) should be true")
        }
        for type in [CKA_EXTRACTABLE, CKA_WRAP, CKA_UNWRAP] {
            #expect(seen.bools[CK_ATTRIBUTE_TYPE(type)] == false, "attribute 0x\(String(type, radix: 16)) should be false")
        }
        // The value can never be read, and SENSITIVE/EXTRACTABLE can never be relaxed.
        #expect(seen.valueRead?.rv == UInt(CKR_ATTRIBUTE_SENSITIVE))
        #expect(seen.clearSensitive != nil)
        #expect(seen.setExtractable != nil)
    }

    @Test("init is idempotent and the key_id is stable")
    func initIdempotent() throws {
        let service = try makeService("idem")
        let first = try #require(service.keyRing.current)
        let again = try service.keyRing.initialize()
        #expect(!again.created)
        #expect(again.key.id == first.id)
        // A second ring on the same token (as after a restart) computes the same current key.
        let other = KeyRing(token: service.token)
        try other.refresh()
        #expect(other.current?.keyID == first.keyID)
    }

    @Test("round trips for 1...512-byte plaintexts and the 32-byte seed", arguments: [1, 2, 15, 16, 17, 31, 32, 33, 64, 255, 256, 511, 512, EnvelopeService.maxPlaintextV2])
    func roundTrip(size: Int) throws {
        let service = try EnvelopeServiceTests.shared()
        let plaintext = SecureRandom.bytes(size)
        let (ciphertext, key) = try service.encrypt(plaintext)
        #expect(ciphertext.count == size + Envelope.overhead)
        #expect(ciphertext.count <= 1024)
        let opened = try service.decrypt(ciphertext, expectedKeyID: key.keyID)
        #expect(opened.plaintext == plaintext)
        #expect(opened.key.id == key.id)
        // v1-style: no key_id given, the ciphertext names its key.
        #expect(try service.decrypt(ciphertext, expectedKeyID: nil).plaintext == plaintext)
    }

    @Test("two encryptions of the same input differ")
    func freshIV() throws {
        let service = try EnvelopeServiceTests.shared()
        let seed = SecureRandom.bytes(32)
        let a = try service.encrypt(seed).ciphertext
        let b = try service.encrypt(seed).ciphertext
        #expect(a != b)
        #expect(a.prefix(Envelope.headerLength) == b.prefix(Envelope.headerLength))
    }

    @Test("empty and oversize plaintexts are invalid arguments")
    func limits() throws {
        let service = try EnvelopeServiceTests.shared()
        #expect(throws: KMSError.invalid("plaintext is empty")) { _ = try service.encrypt([]) }
        let tooBig = [UInt8](repeating: 7, count: EnvelopeService.maxPlaintextV2 + 1)
        do {
            _ = try service.encrypt(tooBig)
            Issue.record("oversize plaintext accepted")
        } catch {
            #expect(error.code == .invalidArgument)
        }
    }

    @Test("every single-byte change, every truncation and a wrong key_id are rejected as invalid")
    func tampering() throws {
        let service = try EnvelopeServiceTests.shared()
        let seed = SecureRandom.bytes(32)
        let (ciphertext, key) = try service.encrypt(seed)
        for index in ciphertext.indices {
            var bad = ciphertext
            bad[index] ^= 0x01
            do {
                _ = try service.decrypt(bad, expectedKeyID: key.keyID)
                Issue.record("tampered byte \(index) accepted")
            } catch {
                #expect(error.code == .invalidArgument, "byte \(index): \(error)")
                #expect(!error.message.contains(String(describing: seed)))
            }
        }
        for length in 0..<ciphertext.count {
            #expect(throws: KMSError.self) { _ = try service.decrypt(Array(ciphertext.prefix(length)), expectedKeyID: key.keyID) }
        }
        let other = RootKeyID.random().keyID
        #expect(throws: KMSError.invalid("key_id does not match the key that produced the ciphertext")) {
            _ = try service.decrypt(ciphertext, expectedKeyID: other)
        }
        #expect(throws: KMSError.invalid("key_id is empty")) { _ = try service.decrypt(ciphertext, expectedKeyID: "") }
        // A ciphertext naming a key this token does not hold.
        var foreign = ciphertext
        foreign.replaceSubrange(6..<22, with: RootKeyID.random().bytes)
        do {
            _ = try service.decrypt(foreign, expectedKeyID: nil)
            Issue.record("foreign key accepted")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.hasPrefix("unknown key_id"))
        }
    }

    @Test("16 threads with hundreds of round trips each, all correct")
    func concurrent() async throws {
        let service = try makeService("conc")
        let failures = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<16 {
                group.addTask {
                    await Blocking.run {
                        var bad = 0
                        for _ in 0..<200 {
                            let seed = SecureRandom.bytes(32)
                            guard let (ct, key) = try? service.encrypt(seed),
                                  let opened = try? service.decrypt(ct, expectedKeyID: key.keyID),
                                  opened.plaintext == seed else { bad += 1; continue }
                        }
                        return bad
                    }
                }
            }
            return await group.reduce(0, +)
        }
        #expect(failures == 0)
        #expect(service.token.openSessions <= 4)
    }

    static let sharedService: Result<EnvelopeService, any Error> = Result { try makeService("shared") }
    static func shared() throws -> EnvelopeService { try sharedService.get() }
}

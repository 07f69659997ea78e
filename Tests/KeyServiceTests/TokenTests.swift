import CPKCS11
import Foundation
import KeyService
import PKCS11
import Testing
import TestSupport

/// A token of its own for one test, in the process-wide SoftHSM fixture.
func makeToken(_ base: String, maxSessions: Int = 4) throws -> Token {
    let label = SoftHSMFixture.shared.takeToken()
    return Token(configuration: TokenConfiguration(
        modulePath: SoftHSMFixture.modulePath, tokenLabel: label, pin: Array(SoftHSMFixture.userPIN.utf8),
        maxSessions: maxSessions))
}

@Suite("PKCS#11 token")
struct TokenTests {
    @Test("connects, logs in and finds tokens by label")
    func connect() throws {
        let first = try makeToken("first")
        try first.connect()
        let second = try makeToken("second")
        try second.connect()
        #expect(second.openSessions == 1)
    }

    @Test("an unknown label is a clear error")
    func unknownLabel() throws {
        _ = SoftHSMFixture.shared
        let token = Token(configuration: TokenConfiguration(
            modulePath: SoftHSMFixture.modulePath, tokenLabel: "no-such-token", pin: Array("1".utf8)))
        #expect(throws: PKCS11Error.self) { try token.connect() }
        do {
            try token.connect()
        } catch {
            #expect(error.description.contains("no token labelled 'no-such-token'"))
        }
    }

    @Test("a wrong PIN is tried exactly once and never again")
    func wrongPIN() throws {
        let label = SoftHSMFixture.shared.takeToken()
        let token = Token(configuration: TokenConfiguration(
            modulePath: SoftHSMFixture.modulePath, tokenLabel: label, pin: Array("wrong-pin".utf8)))
        for _ in 0..<3 {
            do {
                try token.connect()
                Issue.record("connect with a wrong PIN succeeded")
            } catch {
                #expect(error.kind == .pinRejected)
                #expect(!error.description.contains("wrong-pin"))
            }
        }
        // SoftHSM counts failed logins; one attempt leaves the token usable with the right PIN.
        let good = Token(configuration: TokenConfiguration(
            modulePath: SoftHSMFixture.modulePath, tokenLabel: label, pin: Array(SoftHSMFixture.userPIN.utf8)))
        try good.connect()
    }

    @Test("a bad module path is a clear error")
    func badModule() {
        let token = Token(configuration: TokenConfiguration(modulePath: "/nonexistent/libpkcs11.so", tokenLabel: "x", pin: []))
        #expect(throws: PKCS11Error.self) { try token.connect() }
    }
}

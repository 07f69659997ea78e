import Foundation
import Testing
import TestSupport
@testable import EtcdAudit

/// Private keys in plaintext values: PEM blocks of every kind and Fabric MSP keystore names; only names come back.
@Suite struct PrivateKeyScanTests {
    static let pemKinds = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "OPENSSH PRIVATE KEY", "DSA PRIVATE KEY"]

    static func pem(_ label: String) -> [UInt8] {
        Array("-----BEGIN \(label)-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END \(label)-----\n".utf8)
    }

    func findings(_ data: [String: [UInt8]]) -> [PrivateKeyScan.Finding] {
        let protobuf = APIServerWriter.secretProtobuf(namespace: "ns", name: "n", data: data)
        let json = APIServerWriter.secretJSON(namespace: "ns", name: "n", data: data)
        let a = PrivateKeyScan.secret(Data(protobuf), encoding: .protobuf)
        let b = PrivateKeyScan.secret(Data(json), encoding: .json)
        #expect(a == b, "protobuf and JSON disagree")
        return a
    }

    @Test(arguments: pemKinds) func pemBlocks(kind: String) {
        #expect(findings(["tls.key": Self.pem(kind), "tls.crt": Array("-----BEGIN CERTIFICATE-----\nMII\n".utf8)])
                == [.init(dataKey: "tls.key", kind: .pem)])
    }

    @Test func keystoreNames() {
        #expect(findings(["4f2a9c_sk": [1, 2, 3], "cert.pem": [4]]) == [.init(dataKey: "4f2a9c_sk", kind: .keystore)])
        #expect(findings(["key.pem": [1]]) == [.init(dataKey: "key.pem", kind: .keystore)])
        #expect(findings(["keystore": [1]]) == [.init(dataKey: "keystore", kind: .keystore)])
        #expect(findings(["priv_sk": [1], "b.key": Self.pem("EC PRIVATE KEY")]).map(\.dataKey) == ["b.key", "priv_sk"])
        // Empty values and look-alike names are not keys.
        #expect(findings(["key.pem": []]).isEmpty)
        #expect(findings(["task": [1], "keystore.txt": [1], "password": Array("hunter2".utf8)]).isEmpty)
    }

    @Test func notKeys() {
        #expect(findings(["ca.crt": Array("-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n".utf8)]).isEmpty)
        #expect(findings(["pub": Array("-----BEGIN PUBLIC KEY-----\nMFkw\n".utf8)]).isEmpty)
        #expect(findings(["text": Array("a PRIVATE KEY----- without a begin line".utf8)]).isEmpty)
        #expect(findings([:]).isEmpty)
    }

    @Test func base64EncodedPEMAndWholeValues() {
        let encoded = Array(Data(Self.pem("EC PRIVATE KEY")).base64EncodedString().utf8)
        #expect(findings(["config.json": Array("{\"key\":\"".utf8) + encoded + Array("\"}".utf8)]) == [.init(dataKey: "config.json", kind: .pem)])
        // A ConfigMap (or any other resource) is scanned whole.
        let configMap = Array("k8s\u{0}".utf8) + Array("...data: ".utf8) + Self.pem("PRIVATE KEY")
        #expect(PrivateKeyScan.whole(Data(configMap)) == [.init(dataKey: "", kind: .pem)])
        #expect(PrivateKeyScan.whole(Data("-----BEGIN CERTIFICATE-----".utf8)).isEmpty)
        // A value that is not a Secret at all is scanned whole as well.
        #expect(PrivateKeyScan.secret(Data([0x6b, 0x38, 0x73, 0x00, 0xff] + Self.pem("RSA PRIVATE KEY")), encoding: .protobuf).count == 1)
    }

    @Test func arbitraryBytesDoNotCrash() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            let count = Int.random(in: 0..<200, using: &generator)
            var bytes = APIServerWriter.random(count)
            if count > 20, Bool.random(using: &generator) { bytes.replaceSubrange(0..<11, with: Array("-----BEGIN ".utf8)) }
            _ = PrivateKeyScan.secret(Data(bytes), encoding: .protobuf)
            _ = PrivateKeyScan.secret(Data(bytes), encoding: .json)
            _ = PrivateKeyScan.whole(Data(bytes))
        }
    }
}

import ConfigFile
import EtcdAudit
import Foundation
import KMSProto
import KeyService
import SwiftProtobuf
import Testing

/// The fuzzers' committed corpora (Fuzz/corpus/<target>/), fed to the same parsers in an ordinary test run with the
/// same checks the fuzz targets make. Inputs that once crashed a parser are kept here too (scripts/fuzz.sh
/// reports them); every file must parse or be refused cleanly.
@Suite("Fuzz corpora replayed through the parsers")
struct FuzzCorpusReplayTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func corpus(_ name: String) throws -> [(String, [UInt8])] {
        let folder = root.appendingPathComponent("Fuzz/corpus/\(name)")
        let files = try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted()
        return try files.map { ($0, Array(try Data(contentsOf: folder.appendingPathComponent($0)))) }
    }

    @Test("envelope: every seed parses to an envelope that serialises back to it, or is refused")
    func envelope() throws {
        let seeds = try Self.corpus("envelope")
        #expect(seeds.count >= 5)
        var parsed = 0
        for (name, bytes) in seeds {
            if let envelope = try? Envelope(parsing: bytes) {
                parsed += 1
                #expect(envelope.serialized() == bytes, "\(name)")
            }
        }
        #expect(parsed >= 1)
    }

    @Test("storage classifier: every seed classifies; the own KMS v2 seed is a KMS v2 envelope of p11kms")
    func storage() throws {
        let classifiers = [StorageClassifier(provider: "p11kms"), StorageClassifier(provider: "kms:v1:name"), StorageClassifier(provider: "")]
        for (name, bytes) in try Self.corpus("storage") {
            let format = classifiers[Int(bytes[0]) % classifiers.count].format(of: Data(bytes.dropFirst()))
            if name == "own-kmsv2" {
                guard case .kmsV2(let provider, _) = format else { Issue.record("own-kmsv2: \(format)"); continue }
                #expect(provider == "p11kms")
            }
        }
    }

    @Test("KMS requests: every seed decodes (or not) and round-trips")
    func kmsRequests() throws {
        func roundTrip<M: Message & Equatable>(_ type: M.Type, _ body: Data) throws -> Bool {
            guard let message = try? M(serializedBytes: body) else { return false }
            #expect(try M(serializedBytes: message.serializedBytes() as [UInt8]) == message)
            return true
        }
        var decoded = 0
        for (_, bytes) in try Self.corpus("kms") {
            let body = Data(bytes.dropFirst())
            switch bytes[0] % 6 {
            case 0: decoded += try roundTrip(V2_EncryptRequest.self, body) ? 1 : 0
            case 1:
                decoded += try roundTrip(V2_DecryptRequest.self, body) ? 1 : 0
                if let request = try? V2_DecryptRequest(serializedBytes: body) {
                    _ = KMSv2Limits.annotationProblem(request.annotations)
                    _ = try? Envelope(parsing: Array(request.ciphertext))
                }
            case 2: decoded += try roundTrip(V2_StatusRequest.self, body) ? 1 : 0
            case 3: decoded += try roundTrip(V1beta1_EncryptRequest.self, body) ? 1 : 0
            case 4: decoded += try roundTrip(V1beta1_DecryptRequest.self, body) ? 1 : 0
            default: decoded += try roundTrip(V1beta1_VersionRequest.self, body) ? 1 : 0
            }
        }
        #expect(decoded >= 7)
    }

    @Test("config file: every seed gives known settings or a clear error; the deploy seed parses")
    func config() throws {
        for (name, bytes) in try Self.corpus("config") {
            do {
                let settings = try ConfigFile.parse(bytes, path: name)
                for key in settings.keys { #expect(SettingKeys.entry(key) != nil, "\(name): \(key)") }
                if name == "octal" { #expect(settings["socket-mode"] == "0660" && settings["token-label"] == "0123") }
            } catch {
                #expect(!error.description.isEmpty)
                #expect(name != "deploy", "\(error)")
            }
        }
    }
}

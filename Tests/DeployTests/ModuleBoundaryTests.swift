import Foundation
import Testing

/// The module map the README describes: PKCS#11 stays inside the PKCS11 target. The key service deals in root keys
/// and envelopes; a Cryptoki type, constant or C import creeping back into it fails here.
@Suite("Module boundaries")
struct ModuleBoundaryTests {
    /// Code lines (comments and string literals dropped: messages may name an attribute) of every Swift file under
    /// `Sources/<target>`.
    private func codeLines(of target: String) throws -> [(file: String, line: String)] {
        let folder = Repository.url("Sources/\(target)")
        let files = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasSuffix(".swift") }
        let literal = try Regex(#""(?:[^"\\]|\\.)*""#)
        return try files.flatMap { file in
            try String(contentsOf: folder.appendingPathComponent(file), encoding: .utf8)
                .split(separator: "\n").map { line in
                    let code = line.range(of: "//").map { line[..<$0.lowerBound] } ?? line[...]
                    return (file: file, line: String(code).replacing(literal, with: "\"\""))
                }
        }
    }

    @Test("KeyService imports no PKCS#11 header and names no Cryptoki type, constant, session or object handle")
    func keyServiceHasNoPKCS11Types() throws {
        let pattern = try Regex(#"import CPKCS11|\bCK[A-Z]?_[A-Z_]+|\bCK[AORFKMS]_|\bSession\b|\bObjectHandle\b|\bAttribute\b"#)
        let lines = try codeLines(of: "KeyService")
        #expect(lines.count > 500, "KeyService's sources were not found")
        let offending = lines.filter { $0.line.contains(pattern) }
        #expect(offending.isEmpty, "\(offending.map { "\($0.file): \($0.line)" }.joined(separator: "\n"))")
    }

    @Test("every PKCS#11 template and C import lives in PKCS11 (and the benchmark), nowhere else in Sources")
    func pkcs11StaysInItsTarget() throws {
        let allowed: Set<String> = ["PKCS11", "CPKCS11", "CFaultPKCS11", "P11KMSBench", "TestSupport"]
        let targets = try FileManager.default.contentsOfDirectory(atPath: Repository.url("Sources").path)
            .filter { !allowed.contains($0) && !$0.hasPrefix(".") }
        #expect(targets.contains("KeyService") && targets.contains("KMSServer"))
        for target in targets where FileManager.default.fileExists(atPath: Repository.url("Sources/\(target)").path) {
            let lines = (try? codeLines(of: target)) ?? []
            let imports = lines.filter { $0.line.contains("import CPKCS11") }
            #expect(imports.isEmpty, "\(target): \(imports.map(\.file))")
        }
    }
}

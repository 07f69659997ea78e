import Foundation

/// The fault-injecting PKCS#11 module (`libFaultPKCS11.so`, built by SwiftPM from `Sources/CFaultPKCS11`) and the
/// process-wide fault plan it reads.
///
/// The C module reads `FAULTPKCS11_MODULE`, `FAULTPKCS11_CONTROL` and `FAULTPKCS11_LOG` once, when it is first
/// loaded, so `FaultModule.shared` sets them once per process before any test loads it. The real module behind it is
/// a private copy of SoftHSM in a temporary folder: the dynamic loader then maps it as a separate library with its
/// own state, so the `C_Finalize` + `C_Initialize` of a recovery through the fault module never touches the SoftHSM
/// instance that other suites use directly in the same process. Both instances read the shared fixture's token
/// directory (`SOFTHSM2_CONF`), so pooled tokens work through either.
///
/// The plan is process-wide: tests that change it must not run in parallel with each other (one serialized suite).
public final class FaultModule: Sendable {
    /// `libFaultPKCS11.so` next to the test bundle, or `P11KMS_FAULT_MODULE` when set.
    public static var path: String { shared.modulePath }

    public static let shared: FaultModule = {
        do {
            return try FaultModule()
        } catch {
            fatalError("cannot set up the fault-injecting PKCS#11 module: \(error)")
        }
    }()

    public let modulePath: String
    /// The private copy of the real module that the fault module forwards to.
    public let realModulePath: String
    public let controlPath: String
    public let logPath: String
    private let planCounter = LockedCounter()

    private init() throws {
        _ = SoftHSMFixture.shared
        modulePath = try FaultModule.locate()
        let root = try TemporaryDirectory.make(prefix: "faultpkcs11")
        realModulePath = root.appendingPathComponent("real-pkcs11-module.so").path
        // Copy the bytes (the installed path may be a symbolic link, which copyItem would copy as a link).
        try Data(contentsOf: URL(fileURLWithPath: SoftHSMFixture.modulePath)).write(to: URL(fileURLWithPath: realModulePath))
        controlPath = root.appendingPathComponent("plan").path
        logPath = root.appendingPathComponent("calls.log").path
        _ = FileManager.default.createFile(atPath: controlPath, contents: Data())
        _ = FileManager.default.createFile(atPath: logPath, contents: Data())
        setenv("FAULTPKCS11_MODULE", realModulePath, 1)
        setenv("FAULTPKCS11_CONTROL", controlPath, 1)
        setenv("FAULTPKCS11_LOG", logPath, 1)
    }

    /// Finds `libFaultPKCS11.so` in the build folder that holds the running test bundle.
    static func locate() throws -> String {
        let name = "libFaultPKCS11.so"
        if let explicit = ProcessInfo.processInfo.environment["P11KMS_FAULT_MODULE"], !explicit.isEmpty {
            return explicit
        }
        var candidates: [URL] = []
        if let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append(URL(fileURLWithPath: executable).deletingLastPathComponent())
        }
        candidates.append(Bundle.main.bundleURL)
        candidates.append(Bundle.main.bundleURL.deletingLastPathComponent())
        for folder in candidates {
            let path = folder.appendingPathComponent(name).path
            if FileManager.default.fileExists(atPath: path) { return path }
        }
        throw FixtureError("\(name) not found next to the test bundle (looked in \(candidates.map(\.path))); run 'swift build'")
    }

    /// Replaces the fault plan (see `Sources/CFaultPKCS11/faultpkcs11.c` for the syntax). The file is replaced by a
    /// rename, so the module never reads half a plan and always sees a new inode.
    public func setPlan(_ lines: String...) {
        let text = "# plan \(planCounter.next())\n" + lines.joined(separator: "\n") + "\n"
        let temporary = controlPath + ".new"
        do {
            try Data(text.utf8).write(to: URL(fileURLWithPath: temporary))
            guard rename(temporary, controlPath) == 0 else { throw FixtureError("rename failed: \(errno)") }
        } catch {
            fatalError("cannot write the fault plan: \(error)")
        }
    }

    /// Pass everything through.
    public func clearPlan() { setPlan() }

    /// The calls logged so far as (function, rv) pairs, from this process only.
    public func loggedCalls() -> [(function: String, rv: UInt)] {
        let pid = String(getpid())
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count == 3, fields[0] == pid, fields[2].hasPrefix("0x"),
                  let rv = UInt(fields[2].dropFirst(2), radix: 16) else { return nil }
            return (String(fields[1]), rv)
        }
    }

    /// A mark to pass to `calls(since:)`.
    public func logMark() -> Int { loggedCalls().count }

    /// The calls logged after `mark`.
    public func calls(since mark: Int) -> [(function: String, rv: UInt)] { Array(loggedCalls().dropFirst(mark)) }
}

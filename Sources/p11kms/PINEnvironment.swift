#if canImport(Glibc)
import Glibc
#endif

/// P11KMS_PIN leaves the process environment once it has been read.
///
/// `unsetenv` alone is not enough on Linux: it only drops the pointer from `environ`, while the kernel's view,
/// `/proc/PID/environ`, reads the original block the process was started with, where the text stays. So the entry's
/// bytes are overwritten in place first (the whole `P11KMS_PIN=…` string, so the name goes too), then the variable is
/// unset: children started later do not inherit it, and `/proc/PID/environ` no longer shows it. Copies already
/// taken (Foundation's `ProcessInfo.environment` dictionaries) are ordinary heap memory of this process.
enum PINEnvironment {
    static let name = "P11KMS_PIN"

    static func scrub() {
        let prefix = Array((name + "=").utf8CString.dropLast())
        var entries: [UnsafeMutablePointer<CChar>] = []
        var index = 0
        while let entry = environ[index] {
            if strncmp(entry, prefix, prefix.count) == 0 { entries.append(entry) }
            index += 1
        }
        guard !entries.isEmpty else { return }
        unsetenv(name)
        for entry in entries { explicit_bzero(entry, strlen(entry)) }
    }
}

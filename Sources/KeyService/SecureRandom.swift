#if canImport(Glibc)
import Glibc
#endif

/// Bytes from the kernel's CSPRNG, used for GCM IVs, key identities and probes: glibc's `arc4random_buf` (glibc 2.36
/// and later read `getrandom(2)` directly, one call per request, and abort rather than return weak bytes).
public enum SecureRandom {
    public static func bytes(_ count: Int) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            if let base = buffer.baseAddress, count > 0 { arc4random_buf(base, count) }
            initialized = count
        }
    }
}

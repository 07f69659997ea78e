#if canImport(Glibc)
import Glibc
#endif

/// Overwrites buffers that held data keys, seeds or a PIN once the code that owns them is done with them.
///
/// Honest limits, from Swift's value semantics: an `Array` is copy-on-write. `bytes(_:)` zeroes the storage the
/// variable refers to now; if that storage is shared with another array (a copy that was never written to), the
/// mutation first gives this variable a private copy and zeroes only that, and the shared bytes stay as they were.
/// So it is called only on arrays this code made itself and did not hand out. Copies made elsewhere are out of
/// reach: gRPC's receive buffers, protobuf's `Data`, the runtime's reallocation when an array grows, and whatever
/// the PKCS#11 module keeps. `explicit_bzero` is used so the writes are not removed as dead stores before the
/// memory is freed.
public enum Zeroize {
    public static func bytes(_ bytes: inout [UInt8]) {
        bytes.withUnsafeMutableBytes { buffer in
            guard let base = buffer.baseAddress, buffer.count > 0 else { return }
            explicit_bzero(base, buffer.count)
        }
    }

    /// Runs `body` with `bytes`, then zeroes them, also when `body` throws.
    public static func after<T, E: Error>(_ bytes: inout [UInt8], _ body: (inout [UInt8]) throws(E) -> T) throws(E) -> T {
        defer { Zeroize.bytes(&bytes) }
        return try body(&bytes)
    }
}

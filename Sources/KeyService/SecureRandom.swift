/// Bytes from the system CSPRNG (`SystemRandomNumberGenerator` reads the kernel's `getrandom` on Linux), used for
/// GCM IVs and key identities.
public enum SecureRandom {
    public static func bytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            var offset = 0
            while offset < count {
                var word = generator.next()
                let n = min(8, count - offset)
                withUnsafeBytes(of: &word) { raw in
                    for i in 0..<n { buffer[offset + i] = raw[i] }
                }
                offset += n
            }
            initialized = count
        }
    }
}

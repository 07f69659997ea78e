import KeyService
import Testing

@Suite("Zeroize")
struct ZeroizeTests {
    @Test("zeroes an array it owns; a copy sharing the storage keeps its bytes (copy-on-write, as documented)")
    func zeroes() {
        var owned: [UInt8] = Array(1...32)
        Zeroize.bytes(&owned)
        #expect(owned == [UInt8](repeating: 0, count: 32))
        var original: [UInt8] = Array(1...32)
        let shared = original
        Zeroize.bytes(&original)
        #expect(original == [UInt8](repeating: 0, count: 32))
        #expect(shared == Array(1...32))
        var thrown: [UInt8] = [9, 9, 9]
        #expect(throws: CancellationError.self) {
            try Zeroize.after(&thrown) { (_: inout [UInt8]) throws(CancellationError) in throw CancellationError() }
        }
        #expect(thrown == [0, 0, 0])
    }
}

/// Test helpers: compact hex for byte-level assertions.

/// Bytes from a hex string; spaces are ignored ("0a 02 de ad").
func bytes(_ hex: String) -> [UInt8] {
    let digits = Array(hex.filter { !$0.isWhitespace })
    precondition(digits.count % 2 == 0, "odd number of hex digits")
    return stride(from: 0, to: digits.count, by: 2).map {
        UInt8(String(digits[$0...$0 + 1]), radix: 16)!
    }
}

/// Lowercase hex without separators, for readable failure messages.
func hex(_ value: [UInt8]) -> String {
    value.map { byte in
        let s = String(byte, radix: 16)
        return s.count == 1 ? "0" + s : s
    }.joined()
}

/// UTF-8 bytes of an ASCII literal.
func ascii(_ s: String) -> [UInt8] { Array(s.utf8) }

import Foundation
import KMSServer
import Logging
import Testing
import TestSupport

/// The text log format escapes control characters in the message, keys and values, so a client-supplied string
/// (a request uid, a key_id) cannot end a line or forge fields; request strings are cut by `LogSafe`.
@Suite("Logs: escaped, one line per event")
struct LineLogEscapingTests {
    static let forged = "evil\n2026-01-01T00:00:00.000Z error forged level=error\r\u{1b}[31mred\u{85}nel\u{2028}ls\\\"q\u{7f}\u{0}"

    @Test("every control character in a value and in the message is escaped; quotes and backslashes inside quotes")
    func escapesValues() {
        let line = LineLogHandler.render(format: .text, timestamp: "T", level: .info, message: "m\nsg\u{1b}",
                                         label: "p11kms", metadata: ["uid": "\(Self.forged)", "plain": "abc", "empty": ""])
        #expect(!line.unicodeScalars.contains { $0.properties.generalCategory == .control || $0 == "\u{2028}" })
        #expect(line == #"T info m\nsg\x1b empty="" plain=abc uid="evil\n2026-01-01T00:00:00.000Z error forged level=error\r\x1b[31mred\x85nel\u{2028}ls\\\"q\x7f\x00""#)
        // A value that needs no quoting is written as is; a bare backslash forces quotes so it cannot be misread.
        #expect(LineLogHandler.render(format: .text, timestamp: "T", level: .debug, message: "encrypt", label: "l",
                                      metadata: ["key_id": "p11kms-00", "x": "a\\b"]) == #"T debug encrypt key_id=p11kms-00 x="a\\b""#)
    }

    @Test("JSON lines stay one object per line")
    func json() throws {
        let line = LineLogHandler.render(format: .json, timestamp: "T", level: .info, message: "m\n", label: "p11kms",
                                         metadata: ["uid": "\(Self.forged)"])
        #expect(!line.contains("\n") && !line.contains("\r"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        #expect(object["uid"] == Self.forged)
    }

    @Test("request strings are cut to 128 characters with a marker giving the full length")
    func truncation() {
        #expect(LogSafe.requestString("short-uid") == "short-uid")
        let exact = String(repeating: "a", count: 128)
        #expect(LogSafe.requestString(exact) == exact)
        let long = String(repeating: "b", count: 1024)
        #expect(LogSafe.requestString(long) == String(repeating: "b", count: 128) + "…[truncated, 1024 bytes]")
        let wide = String(repeating: "é", count: 200)
        #expect(LogSafe.requestString(wide).hasPrefix(String(repeating: "é", count: 128) + "…[truncated, 400 bytes]"))
    }

    @Test("a forged uid with a newline and level=error gives one log line from the real plugin")
    func forgedUIDEndToEnd() throws {
        let plugin = try PluginProcess(name: "forgedlog")
        try plugin.start(["--log-format", "text", "--log-level", "debug", "--http-listen", "off"])
        let client = try plugin.client()
        let response = try client.encrypt(randomBytes(32), uid: Self.forged)
        _ = try client.decrypt(response.ciphertext, keyID: response.keyID, uid: Self.forged)
        #expect(plugin.stop() == 0)
        let lines = plugin.log.split(separator: "\n", omittingEmptySubsequences: false)
        let withUID = lines.filter { $0.contains("evil") }
        #expect(withUID.count == 2, "\(withUID)")
        #expect(withUID.allSatisfy { $0.contains(#"uid="evil\n2026-01-01T00:00:00.000Z error forged level=error\r\x1b[31mred"#) })
        #expect(!lines.contains { $0.hasPrefix("2026-01-01T00:00:00.000Z") })
        #expect(!plugin.log.unicodeScalars.contains { $0 == "\u{1b}" || $0 == "\r" || $0 == "\u{85}" })
    }
}

import Foundation
import Logging

/// One line per event on stderr, as text or JSON. Metadata values are logged escaped (see `render`); callers never
/// put plaintext, key bytes or the PIN in them, and pass request-supplied strings through `LogSafe.requestString`.
public struct LineLogHandler: LogHandler {
    public enum Format: String, Sendable, CaseIterable {
        case text
        case json
    }

    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public let label: String
    public let format: Format

    public init(label: String, format: Format, level: Logger.Level) {
        self.label = label
        self.format = format
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let line = LineLogHandler.render(format: format, timestamp: LineLogHandler.timestamp(), level: event.level,
                                         message: event.message.description, label: label, metadata: merged)
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    /// One log line, without its newline. Text: `TIME LEVEL MESSAGE key=value ...` where every control character
    /// (newline, CR, ESC, all of C0 and C1, DEL, U+2028/U+2029) in the message, a key or a value is written as an
    /// escape (`\n`, `\r`, `\t`, `\x1b`, `\u{2028}`), a backslash as `\\`, and a value with a space, `=`, `"`, a
    /// backslash or an escape is quoted (`"` inside as `\"`): whatever a client puts in a logged string, the line
    /// stays one line and its fields cannot be forged. JSON: JSONSerialization escapes control characters itself.
    public static func render(format: Format, timestamp: String, level: Logger.Level, message: String, label: String,
                              metadata: Logger.Metadata) -> String {
        switch format {
        case .text:
            let fields = metadata.sorted { $0.key < $1.key }.map { "\(escape($0.key, quoting: false))=\(quoteIfNeeded("\($0.value)"))" }
            return ([timestamp, level.rawValue, escape(message, quoting: false)] + fields).joined(separator: " ")
        case .json:
            var object: [String: String] = ["time": timestamp, "level": level.rawValue, "msg": message, "logger": label]
            for (key, value) in metadata where object[key] == nil { object[key] = "\(value)" }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
            return String(decoding: data, as: UTF8.self)
        }
    }

    static func quoteIfNeeded(_ value: String) -> String {
        let escaped = escape(value, quoting: true)
        let needsQuotes = value.isEmpty || escaped != value || value.contains(where: { $0 == " " || $0 == "=" })
        return needsQuotes ? "\"\(escaped)\"" : value
    }

    /// Control characters as escapes, backslashes doubled, and with `quoting` a double quote as `\"`.
    static func escape(_ text: String, quoting: Bool) -> String {
        var out = ""
        out.unicodeScalars.reserveCapacity(text.unicodeScalars.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\\": out += "\\\\"
            case "\"" where quoting: out += "\\\""
            case _ where scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value):
                out += "\\x" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16)
            case "\u{2028}", "\u{2029}":
                out += "\\u{" + String(scalar.value, radix: 16) + "}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ v: Int32, _ w: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        let millis = Int32(now.tv_nsec / 1_000_000)
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(millis, 3))Z"
    }
}

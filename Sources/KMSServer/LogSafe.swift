/// Strings a client sent (a request's uid, the key_id it names) as they may be logged: at most
/// `requestStringLimit` characters, longer ones cut with a marker that says how long they were. Control
/// characters are left to the log handler, which escapes every value (`LineLogHandler.render`).
public enum LogSafe {
    public static let requestStringLimit = 128

    public static func requestString(_ value: String) -> String {
        var count = 0
        var end = value.unicodeScalars.startIndex
        for index in value.unicodeScalars.indices {
            if count == requestStringLimit { end = index; break }
            count += 1
            end = value.unicodeScalars.index(after: index)
        }
        guard end < value.unicodeScalars.endIndex else { return value }
        let kept = String(value.unicodeScalars[..<end])
        return kept + "…[truncated, \(value.utf8.count) bytes]"
    }
}

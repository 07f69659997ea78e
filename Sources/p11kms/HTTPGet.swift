import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A plain blocking HTTP/1.1 GET (`Connection: close`, body read to the end), for reading a plugin's `/metrics`
/// from the command line. Every step is bounded by `timeout`; bodies over 16 MiB are refused.
enum HTTPGet {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    static let maxResponse = 16 << 20

    static func fetch(host: String, port: Int, path: String, timeout: Double) throws(Failure) -> (status: Int, body: String) {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var found: UnsafeMutablePointer<addrinfo>?
        let resolved = getaddrinfo(host, String(port), &hints, &found)
        guard resolved == 0, let first = found else {
            throw Failure(description: "cannot resolve \(host): \(String(cString: gai_strerror(resolved)))")
        }
        defer { freeaddrinfo(first) }
        var lastError = "no address"
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let info = candidate {
            candidate = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
            guard fd >= 0 else { lastError = String(cString: strerror(errno)); continue }
            defer { close(fd) }
            // On Linux SO_SNDTIMEO bounds connect() too.
            var limit = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1_000_000))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
                lastError = String(cString: strerror(errno))
                continue
            }
            return try exchange(fd, host: host, path: path)
        }
        throw Failure(description: lastError)
    }

    private static func exchange(_ fd: Int32, host: String, path: String) throws(Failure) -> (status: Int, body: String) {
        let request = Array("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nAccept: text/plain\r\nConnection: close\r\n\r\n".utf8)
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure(description: "send failed: \(String(cString: strerror(errno)))") }
            sent += n
        }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            guard n > 0 else { throw Failure(description: "no answer: \(String(cString: strerror(errno)))") }
            response.append(contentsOf: buffer[0..<n])
            guard response.count <= maxResponse else { throw Failure(description: "answer larger than 16 MiB") }
        }
        let separator = Array("\r\n\r\n".utf8)
        guard let headEnd = (0...max(0, response.count - separator.count)).first(where: { response[$0..<min($0 + 4, response.count)].elementsEqual(separator) }),
              response.count >= separator.count else {
            throw Failure(description: "not an HTTP answer")
        }
        let head = String(decoding: response[0..<headEnd], as: UTF8.self)
        let statusLine = head.split(separator: "\r\n").first ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            throw Failure(description: "not an HTTP answer")
        }
        var body = Array(response[(headEnd + separator.count)...])
        for line in head.split(separator: "\r\n").dropFirst() {
            let field = line.split(separator: ":", maxSplits: 1)
            if field.count == 2, field[0].lowercased() == "content-length",
               let length = Int(field[1].trimmingCharacters(in: .whitespaces)), length < body.count {
                body = Array(body[0..<length])
            }
        }
        return (status, String(decoding: body, as: UTF8.self))
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// A `unix://` listen address as kube-apiserver writes it (`unix:///var/run/kms/hsm.sock`). A path starting with
/// `@` (written `unix:///@name`) is an abstract socket.
public struct SocketAddress: Sendable, Equatable, CustomStringConvertible {
    public let path: String

    public init(listen: String) throws(ServeError) {
        var rest: Substring
        if listen.hasPrefix("unix://") {
            rest = listen.dropFirst("unix://".count)
        } else if listen.hasPrefix("unix:") {
            rest = listen.dropFirst("unix:".count)
        } else {
            throw ServeError("--listen must be a unix socket address such as unix:///var/run/kms/p11kms.sock, got \"\(listen)\"")
        }
        if rest.hasPrefix("/@") { rest = rest.dropFirst() }
        guard rest.hasPrefix("/") || rest.hasPrefix("@"), rest.count > 1 else {
            throw ServeError("--listen needs an absolute socket path, got \"\(listen)\"")
        }
        guard rest.utf8.count < 108 else { throw ServeError("socket path is longer than 107 bytes") }
        path = String(rest)
    }

    public var isAbstract: Bool { path.hasPrefix("@") }

    /// The address in the gRPC C core's syntax.
    public var grpcAddress: String { isAbstract ? "unix-abstract:\(path.dropFirst())" : "unix:\(path)" }

    public var description: String { isAbstract ? "unix:///\(path)" : "unix://\(path)" }
}

/// A start-up or serving problem, with a message meant for the admin.
public struct ServeError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

enum SocketPolicy {
    /// Makes the path usable: a stale socket left by a dead process is removed; a socket that a live process
    /// answers on is never taken over; anything that is not a socket is left alone.
    static func prepare(_ address: SocketAddress) throws(ServeError) {
        guard !address.isAbstract else { return }
        var st = stat()
        guard lstat(address.path, &st) == 0 else {
            if errno == ENOENT { return }
            throw ServeError("cannot inspect \(address.path): \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw ServeError("\(address.path) exists and is not a socket; refusing to replace it")
        }
        if isLive(address.path) {
            throw ServeError("\(address.path) is served by a live process; refusing to take it over")
        }
        guard unlink(address.path) == 0 || errno == ENOENT else {
            throw ServeError("cannot remove the stale socket \(address.path): \(String(cString: strerror(errno)))")
        }
    }

    /// Whether something accepts connections on the socket.
    static func isLive(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.prefix(raw.count - 1).enumerated() { raw[i] = b }
        }
        let result = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return result == 0
    }

    /// Refuses a socket directory that other users may write to (they could replace the socket or plant a symlink),
    /// unless it is sticky and owned by root (like /tmp, where only the owner may rename or remove an entry).
    static func checkDirectory(_ address: SocketAddress) throws(ServeError) {
        guard !address.isAbstract else { return }
        var directory = String(address.path[..<(address.path.lastIndex(of: "/") ?? address.path.startIndex)])
        if directory.isEmpty { directory = "/" }
        var st = stat()
        guard stat(directory, &st) == 0 else {
            throw ServeError("cannot inspect the socket directory \(directory): \(String(cString: strerror(errno)))")
        }
        let othersMayWrite = st.st_mode & S_IWOTH != 0
        let stickyRoot = st.st_mode & S_ISVTX != 0 && st.st_uid == 0
        if othersMayWrite && !stickyRoot {
            throw ServeError("the socket directory \(directory) is writable by every user (mode \(String(st.st_mode & 0o7777, radix: 8))); "
                + "use a directory only the plugin's user (and the apiserver's group) may write to, e.g. /var/run/kms with mode 0750")
        }
    }

    /// Sets the socket's mode and, optionally, its group, on the inode that was bound: a path that is no longer that
    /// socket (replaced, or a symlink) is refused, and neither call follows symlinks.
    static func applyPermissions(_ address: SocketAddress, mode: mode_t, group: String?, inode: ino_t?) throws(ServeError) {
        guard !address.isAbstract else { return }
        var st = stat()
        guard lstat(address.path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK, inode == nil || st.st_ino == inode else {
            throw ServeError("\(address.path) is no longer the socket this process bound; refusing to change its permissions")
        }
        if let group {
            guard let entry = getgrnam(group) else { throw ServeError("unknown group \"\(group)\" for --socket-group") }
            guard lchown(address.path, uid_t.max, entry.pointee.gr_gid) == 0 else {
                throw ServeError("cannot set the socket's group: \(String(cString: strerror(errno)))")
            }
        }
        guard fchmodat(AT_FDCWD, address.path, mode, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw ServeError("cannot set the socket's mode: \(String(cString: strerror(errno)))")
        }
        guard lstat(address.path, &st) == 0, st.st_ino == inode ?? st.st_ino, st.st_mode & 0o777 == mode else {
            throw ServeError("\(address.path) changed while its permissions were set; refusing to serve on it")
        }
    }

    /// Removes the socket file if it is still the one this process created.
    static func remove(_ address: SocketAddress, inode: ino_t?) {
        guard !address.isAbstract else { return }
        var st = stat()
        guard lstat(address.path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return }
        if let inode, st.st_ino != inode { return }
        unlink(address.path)
    }

    static func inode(_ address: SocketAddress) -> ino_t? {
        guard !address.isAbstract else { return nil }
        var st = stat()
        guard lstat(address.path, &st) == 0 else { return nil }
        return st.st_ino
    }
}

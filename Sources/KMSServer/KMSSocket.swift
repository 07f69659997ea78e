import GRPCTransport
import Lifecycle
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The gRPC server on the KMS socket, with the socket policy: the path is checked before binding (a live server is
/// never taken over, a directory others may write to is refused), the socket is created under a restrictive umask,
/// its mode and group are applied without following symlinks to the inode that was bound, and the file is removed
/// on shutdown if it is still ours.
final class KMSSocket: Service {
    let address: SocketAddress
    let server: GRPCServer
    private let mode: mode_t
    private let group: String?
    private let inode = Mutex<ino_t?>(nil)
    var name: String { "KMS socket \(address)" }

    init(address: SocketAddress, server: GRPCServer, mode: mode_t, group: String?) {
        self.address = address
        self.server = server
        self.mode = mode
        self.group = group
    }

    func start() throws(ServiceError) {
        do throws(ServeError) {
            try SocketPolicy.checkDirectory(address)
            try SocketPolicy.prepare(address)
        } catch {
            throw ServiceError(error.description)
        }
        // No window in which the socket exists with a looser mode than configured.
        let previous = umask(0o177)
        do throws(GRPCStatus) {
            try server.startServing()
        } catch {
            umask(previous)
            throw ServiceError("cannot listen on \(address): \(error.message)")
        }
        umask(previous)
        let bound = SocketPolicy.inode(address)
        inode.withLock { $0 = bound }
        do throws(ServeError) {
            try SocketPolicy.applyPermissions(address, mode: mode, group: group, inode: bound)
        } catch {
            // Leave nothing behind: no server, no socket file.
            server.shutdown(gracePeriod: .zero)
            SocketPolicy.remove(address, inode: bound)
            throw ServiceError(error.description)
        }
    }

    /// Stops accepting, lets in-flight calls finish within the server's grace (bounded by `deadline`), removes the
    /// socket file in any case.
    func shutdown(deadline: ContinuousClock.Instant) -> Bool {
        let clean = server.shutdown(deadline: deadline)
        SocketPolicy.remove(address, inode: inode.withLock { $0 })
        return clean
    }
}

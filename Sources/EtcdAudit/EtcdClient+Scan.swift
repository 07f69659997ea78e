import EtcdProto
import Foundation
import Synchronization

/// One page of a prefix scan.
public struct EtcdPage: Sendable {
    public var kvs: [Mvccpb_KeyValue]
    /// The revision every page of the scan is read at.
    public var revision: Int64
    /// The number of keys in the whole range at that revision (from the first page).
    public var total: Int64
}

extension EtcdClient {
    /// Reads every key starting with `prefix` in pages of `pageSize`, all at one revision: the first page's
    /// `header.revision`. Each page after the first starts at the last key + `\0`. The next page is fetched on
    /// another thread while `body` handles the current one. Fails with `etcdFailed` (OutOfRange) when the revision
    /// is compacted during the scan.
    public func scan(prefix: [UInt8], pageSize: Int, revision: Int64 = 0,
                     _ body: (EtcdPage) throws(AuditError) -> Void) throws(AuditError) {
        precondition(pageSize > 0)
        var request = Etcdserverpb_RangeRequest()
        request.key = Data(prefix)
        request.rangeEnd = Data(EtcdKeys.prefixEnd(prefix))
        request.limit = Int64(pageSize)
        request.revision = revision
        let first = try range(request)
        let pinned = first.header.revision
        let total = first.count
        request.revision = pinned

        var current = first
        while true {
            let more = current.more && !current.kvs.isEmpty
            var prefetch: Prefetch?
            if more, let lastKey = current.kvs.last?.key {
                var next = request
                next.key = lastKey + Data([0])
                prefetch = Prefetch(client: self, request: next)
            }
            do {
                try body(EtcdPage(kvs: current.kvs, revision: pinned, total: total))
            } catch {
                _ = prefetch?.wait()
                throw error
            }
            guard let prefetch else { return }
            current = try prefetch.wait().get()
        }
    }
}

/// A Range call running on a thread of its own.
private final class Prefetch: Sendable {
    private let result = Mutex<Result<Etcdserverpb_RangeResponse, AuditError>?>(nil)
    private let done = DispatchSemaphore(value: 0)

    init(client: EtcdClient, request: Etcdserverpb_RangeRequest) {
        let thread = Thread { [self] in
            let fetched = Result { () throws(AuditError) in try client.range(request) }
            result.withLock { $0 = fetched }
            done.signal()
        }
        thread.start()
    }

    func wait() -> Result<Etcdserverpb_RangeResponse, AuditError> {
        done.wait()
        return result.withLock { $0! }
    }
}

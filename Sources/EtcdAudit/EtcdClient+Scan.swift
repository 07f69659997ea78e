import EtcdProto
import Foundation
import Synchronization

/// One page of a prefix scan.
public struct EtcdPage: Sendable {
    public var kvs: [Mvccpb_KeyValue]
    /// The revision every page of the scan is read at.
    public var revision: Int64
    /// The number of keys in the whole range at that revision.
    public var total: Int64
}

/// A key range `[start, end)` and how many keys it holds at the scan's revision.
struct KeyWindow: Equatable {
    var start: [UInt8]
    var end: [UInt8]
    var count: Int64
}

extension EtcdClient {
    /// Reads every key starting with `prefix` in pages of at most `pageSize`, all at one revision (the first call's
    /// `header.revision`, or `revision` when given). Pages arrive in key order; the next one is fetched on another
    /// thread while `body` handles the current one. Fails with `etcdFailed` (OutOfRange) when that revision is
    /// compacted during the scan.
    ///
    /// etcd (3.4, and 3.5 to a lesser degree) walks the *whole* requested range for every Range call, even with a
    /// limit, to count it: paging one big range costs O(n²/pageSize). So the range is first cut into windows of at
    /// most `4 × pageSize` keys, by the bytes that follow the prefix (count-only calls), and each window is paged
    /// on its own: the scan stays linear in the number of keys. Each page after a window's first starts at the last
    /// key + `\0`.
    public func scan(prefix: [UInt8], pageSize: Int, revision: Int64 = 0,
                     _ body: (EtcdPage) throws(AuditError) -> Void) throws(AuditError) {
        precondition(pageSize > 0)
        let root = KeyBucket(prefix: prefix, low: 0, high: 256)
        let (total, pinned) = try count(root.start, root.end, revision: revision)
        let windows = try plan(root, count: total, revision: pinned, target: Int64(pageSize) * 4)
        guard !windows.isEmpty else {
            try body(EtcdPage(kvs: [], revision: pinned, total: 0))
            return
        }

        func firstPage(of window: KeyWindow) -> Etcdserverpb_RangeRequest {
            var request = Etcdserverpb_RangeRequest()
            request.key = Data(window.start)
            request.rangeEnd = Data(window.end)
            request.limit = Int64(pageSize)
            request.revision = pinned
            request.serializable = true
            return request
        }

        var nextWindow = 1
        var request = firstPage(of: windows[0])
        var pending = Prefetch(client: self, request: request)
        while true {
            let response = try pending.wait().get()
            var next: Etcdserverpb_RangeRequest?
            if response.more, let lastKey = response.kvs.last?.key {
                next = request
                next!.key = lastKey + Data([0])
            } else if nextWindow < windows.count {
                next = firstPage(of: windows[nextWindow])
                nextWindow += 1
            }
            if let next {
                request = next
                pending = Prefetch(client: self, request: next)
            }
            do {
                try body(EtcdPage(kvs: response.kvs, revision: pinned, total: total))
            } catch {
                if next != nil { _ = pending.wait() }
                throw error
            }
            if next == nil { return }
        }
    }

    /// The number of keys in `[start, end)` and the revision it was counted at.
    func count(_ start: [UInt8], _ end: [UInt8], revision: Int64) throws(AuditError) -> (count: Int64, revision: Int64) {
        var request = Etcdserverpb_RangeRequest()
        request.key = Data(start)
        request.rangeEnd = Data(end)
        request.countOnly = true
        request.revision = revision
        // At a pinned revision the member that answered it already has every key: no read-index round trip.
        request.serializable = revision != 0
        let response = try range(request)
        return (response.count, response.header.revision)
    }

    /// Cuts `bucket` into windows of at most `target` keys (except where keys share a prefix too long to cut).
    /// Children are counted in key order until they account for the parent's count; the last one's count is
    /// inferred. A count costs etcd O(keys counted), so the work is O(keys × levels).
    func plan(_ bucket: KeyBucket, count: Int64, revision: Int64, target: Int64) throws(AuditError) -> [KeyWindow] {
        guard count > 0 else { return [] }
        guard count > target, bucket.prefix.count < 1024 else {
            return [KeyWindow(start: bucket.start, end: bucket.end, count: count)]
        }
        var windows: [KeyWindow] = []
        var remaining = count
        let children = bucket.children()
        for (index, child) in children.enumerated() where remaining > 0 {
            let childCount = index == children.count - 1
                ? remaining : try self.count(child.start, child.end, revision: revision).count
            remaining -= childCount
            windows += try plan(child, count: childCount, revision: revision, target: target)
        }
        return windows
    }
}

/// The keys that start with `prefix` and whose next byte is in `low..<high` (0...256); with `low == 0` the key
/// equal to `prefix` belongs to the bucket too, so the root bucket `(P, 0, 256)` is exactly etcd's prefix range.
struct KeyBucket: Equatable {
    var prefix: [UInt8]
    var low: Int
    var high: Int

    var start: [UInt8] { low == 0 ? prefix : prefix + [UInt8(low)] }
    var end: [UInt8] { high == 256 ? EtcdKeys.prefixEnd(prefix) : prefix + [UInt8(high)] }

    /// Namespaces and names are DNS labels and subdomains: one bucket per byte of `[-./0-9a-z]`, and the gaps
    /// between them as buckets of their own (cut further in equal parts only if they turn out to be full).
    static let nameBytes: [Int] = Array(0x2d...0x39) + Array(0x61...0x7a)

    /// Buckets that partition this one: all next bytes are cut by `nameBytes`; a narrower range is cut in up to 16
    /// equal parts; a single next byte becomes a longer prefix whose following byte is cut instead.
    func children() -> [KeyBucket] {
        var bucket = self
        while bucket.high - bucket.low == 1 {
            bucket = KeyBucket(prefix: bucket.prefix + [UInt8(bucket.low)], low: 0, high: 256)
        }
        if bucket.low == 0, bucket.high == 256 {
            var parts: [KeyBucket] = []
            var next = 0
            for byte in Self.nameBytes {
                if next < byte { parts.append(KeyBucket(prefix: bucket.prefix, low: next, high: byte)) }
                parts.append(KeyBucket(prefix: bucket.prefix, low: byte, high: byte + 1))
                next = byte + 1
            }
            parts.append(KeyBucket(prefix: bucket.prefix, low: next, high: 256))
            return parts
        }
        let width = bucket.high - bucket.low
        let step = max(1, (width + 15) / 16)
        return stride(from: bucket.low, to: bucket.high, by: step).map {
            KeyBucket(prefix: bucket.prefix, low: $0, high: min($0 + step, bucket.high))
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

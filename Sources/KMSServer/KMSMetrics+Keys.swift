import CoreMetrics
import KeyService
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The series labelled by key_id.
///
/// Usage, recorded on the hot path (a dictionary lookup under a lock, then increments outside it; handles are made
/// on a key's first use only):
/// - `p11kms_key_operations_total{key_id,operation}` (operation `encrypt` or `decrypt`), and the older
///   `p11kms_root_key_operations_total{key_id,operation}` with the same values;
/// - `p11kms_key_last_used_timestamp_seconds{key_id,operation}`: wall-clock time (unix seconds) of the last success.
///
/// Identity and state, refreshed from the key ring before each scrape:
/// - `p11kms_current_key_info{key_id}` 1 for the key Encrypt uses now. When another key becomes current, the old
///   series is removed, not set to 0: an info metric names what is true now, so `p11kms_current_key_info` alone
///   (no `== 1`) is the current key in every query and join, and Prometheus marks the old series stale at the next
///   scrape; the history stays queryable for the rotation timeline.
/// - `p11kms_root_key_info{key_id,state}` 1 per key in the token, state `current`, `active`, `retired` or
///   `pending`; a state change replaces the series, a destroyed key's series is removed.
/// - `p11kms_root_key_created_timestamp_seconds{key_id}`: when the key was generated (from its label in the token,
///   so the same on every node that holds a copy); for a staged rotation this is the staging time.
///
/// Usage series of a key stay for the life of the process (they are counters of what happened), including after
/// the key is destroyed.
public final class KeySeries: Sendable {
    public enum Operation: String, Sendable {
        case encrypt
        case decrypt
    }

    private struct Use: Hashable {
        let keyID: String
        let operation: Operation
    }

    /// Found under the lock, updated outside it (the handles are thread-safe, the count is atomic).
    private final class UseHandles: Sendable {
        let legacy: Counter
        let total: Counter
        let lastUsed: Gauge
        let count = Atomic<UInt64>(0)

        init(_ use: Use) {
            let dimensions = [("key_id", use.keyID), ("operation", use.operation.rawValue)]
            legacy = Counter(label: "p11kms_root_key_operations_total", dimensions: dimensions)
            total = Counter(label: "p11kms_key_operations_total", dimensions: dimensions)
            lastUsed = Gauge(label: "p11kms_key_last_used_timestamp_seconds", dimensions: dimensions)
        }
    }

    private struct Described {
        var state: RootKeyState
        var info: Gauge
        let created: Gauge
    }

    private struct Identity {
        var keys: [String: Described] = [:]
        var current: (keyID: String, gauge: Gauge)?
    }

    private let uses = Mutex<[Use: UseHandles]>([:])
    private let identity = Mutex(Identity())

    public init() {}

    /// Counts one successful use of a key; returns how many times this process used it for `operation`.
    @discardableResult
    public func use(keyID: String, operation: Operation) -> UInt64 {
        let now = KeySeries.wallClockSeconds()
        let use = Use(keyID: keyID, operation: operation)
        let entry = uses.withLock { table in
            if let found = table[use] { return found }
            let made = UseHandles(use)
            table[use] = made
            return made
        }
        entry.legacy.increment()
        entry.total.increment()
        entry.lastUsed.record(now)
        return entry.count.add(1, ordering: .relaxed).newValue
    }

    /// Brings the info series in line with the key ring (called before each scrape; cheap when nothing changed).
    public func describe(_ keys: [RootKey]) {
        identity.withLock { s in
            var present = Set<String>()
            for key in keys {
                present.insert(key.keyID)
                if let known = s.keys[key.keyID] {
                    guard known.state != key.state else { continue }
                    let info = KeySeries.info(key)
                    known.info.destroy()
                    s.keys[key.keyID]!.state = key.state
                    s.keys[key.keyID]!.info = info
                } else {
                    let created = Gauge(label: "p11kms_root_key_created_timestamp_seconds", dimensions: [("key_id", key.keyID)])
                    created.record(Double(key.createdAt))
                    s.keys[key.keyID] = Described(state: key.state, info: KeySeries.info(key), created: created)
                }
            }
            for (keyID, gone) in s.keys where !present.contains(keyID) {
                gone.info.destroy()
                gone.created.destroy()
                s.keys[keyID] = nil
            }
            let current = keys.last { $0.state == .current }?.keyID
            guard s.current?.keyID != current else { return }
            let gauge = current.map { Gauge(label: "p11kms_current_key_info", dimensions: [("key_id", $0)]) }
            gauge?.record(1)
            s.current?.gauge.destroy()
            s.current = current.flatMap { id in gauge.map { (id, $0) } }
        }
    }

    private static func info(_ key: RootKey) -> Gauge {
        let gauge = Gauge(label: "p11kms_root_key_info", dimensions: [("key_id", key.keyID), ("state", key.state.rawValue)])
        gauge.record(1)
        return gauge
    }

    static func wallClockSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1_000_000_000
    }
}

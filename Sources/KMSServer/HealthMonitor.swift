import KeyService
import Lifecycle
import Synchronization

/// What Status reports: healthy only when the token answered recently, with a short reason otherwise.
public struct Health: Sendable, Equatable {
    public var healthy: Bool
    /// "ok" when healthy; otherwise a short reason free of secrets.
    public var reason: String
    public var currentKeyID: String?
    /// When the token last answered a probe successfully (nil: never since start).
    public var lastSuccess: ContinuousClock.Instant?

    public static let starting = Health(healthy: false, reason: "starting", currentKeyID: nil, lastSuccess: nil)
}

/// Keeps the token's health from a background thread of its own: every `refreshInterval` it re-reads the key list
/// (which also picks up rotations by other processes), and every `canaryInterval` it runs a real AES-GCM round trip.
///
/// Health is the age of the last good answer, not the last answer: when no probe has finished for `staleAfter`
/// (a probe stuck inside a hung token), `health` reports unhealthy ("token not answering for 7s") although the
/// probe thread cannot say so itself. Readers (Status, /readyz, metrics) never touch the token: they read the state
/// under a mutex. Requests feed it too: one that finds the token unavailable marks it unhealthy at once.
public final class HealthMonitor: Service {
    public let service: EnvelopeService
    public let refreshInterval: Duration
    public let canaryInterval: Duration
    /// Health older than this is stale (default: 3 × `refreshInterval`, at most 10 s).
    public let staleAfter: Duration
    public var name: String { "token probe" }

    private struct State {
        var health = Health.starting
        /// When the last probe (or a request's report) finished, successful or not.
        var lastAnswer: ContinuousClock.Instant?
        var lastCanary: ContinuousClock.Instant?
        var started: ContinuousClock.Instant?
        var stopping = false
        var wakeRequested = false
        var onChange: [@Sendable (Health, _ keyChanged: Bool) -> Void] = []
        var onProbe: [@Sendable (Health) -> Void] = []
        /// The last health the change callbacks were told about.
        var reported: Health?
    }

    private let state = Mutex(State())
    private let wake = ConditionWait()
    private let firstProbe = Latch()
    private let threads = Mutex<[ServiceThread]>([])

    public init(service: EnvelopeService, refreshInterval: Duration = .seconds(2), canaryInterval: Duration = .seconds(10),
                staleAfter: Duration? = nil) {
        self.service = service
        self.refreshInterval = refreshInterval
        self.canaryInterval = canaryInterval
        self.staleAfter = staleAfter ?? HealthMonitor.defaultStaleAfter(refreshInterval: refreshInterval)
    }

    /// 3 × the probe interval, at most 10 s (and at least 1 s).
    public static func defaultStaleAfter(refreshInterval: Duration) -> Duration {
        min(max(refreshInterval * 3, .seconds(1)), .seconds(10))
    }

    /// The current health, with the staleness rule applied. Never blocks on the token.
    public var health: Health { health(at: .now) }

    public func health(at now: ContinuousClock.Instant) -> Health {
        state.withLock { s in Self.effective(s, now: now, staleAfter: staleAfter) }
    }

    private static func effective(_ s: State, now: ContinuousClock.Instant, staleAfter: Duration) -> Health {
        guard let since = s.lastAnswer ?? s.started else { return s.health }
        let silent = now - since
        guard silent > staleAfter else { return s.health }
        var stale = s.health
        stale.healthy = false
        stale.reason = "token not answering for \(silent.components.seconds)s"
        return stale
    }

    /// Time since the token last answered a probe successfully (since start if it never did; nil before start).
    public var lastSuccessAge: Duration? {
        state.withLock { s in (s.health.lastSuccess ?? s.started).map { ContinuousClock.now - $0 } }
    }

    /// Called when the health changes (healthy/unhealthy or its reason), and whether the key list changed, from the
    /// monitor's own thread: a hung token is reported although the probe itself is stuck.
    public func onChange(_ callback: @escaping @Sendable (Health, Bool) -> Void) {
        state.withLock { $0.onChange.append(callback) }
    }

    /// Called after every finished probe.
    public func onProbe(_ callback: @escaping @Sendable (Health) -> Void) {
        state.withLock { $0.onProbe.append(callback) }
    }

    /// One probe now, on the calling thread (blocks on the token).
    @discardableResult
    public func probe() -> Health {
        let now = ContinuousClock.now
        var keyChanged = false
        var result: Health
        let previous = state.withLock { $0.health }
        do throws(KMSError) {
            keyChanged = try service.refreshKeys()
            let canaryDue = state.withLock { s in s.lastCanary.map { now - $0 >= canaryInterval } ?? true || !s.health.healthy }
            let invalid = HealthMonitor.invalidKeysReason(service.keyRing.invalidKeys)
            // With no usable current key, the reason to report is the invalid object, not the canary's failure.
            if canaryDue && (invalid == nil || service.keyRing.current != nil) {
                try service.canary()
                state.withLock { $0.lastCanary = now }
            }
            if let invalid {
                result = Health(healthy: false, reason: invalid, currentKeyID: service.keyRing.current?.keyID, lastSuccess: .now)
            } else if let current = service.keyRing.current, let warning = service.budget?.warning(for: current.id) {
                result = Health(healthy: false, reason: warning, currentKeyID: current.keyID, lastSuccess: .now)
            } else if let current = service.keyRing.current {
                result = Health(healthy: true, reason: "ok", currentKeyID: current.keyID, lastSuccess: .now)
            } else {
                result = Health(healthy: false, reason: "no current root key in the token", currentKeyID: nil,
                                lastSuccess: previous.lastSuccess)
            }
        } catch {
            result = Health(healthy: false, reason: HealthMonitor.shortReason(error),
                            currentKeyID: service.keyRing.current?.keyID, lastSuccess: previous.lastSuccess)
        }
        // Report the silence this probe ends before its answer replaces it: a stall shorter than the watchdog's
        // sampling period is still logged as 'not answering'. (Not before the first answer: "starting" is no news.)
        if state.withLock({ $0.lastAnswer != nil }) { notifyChange(keyChanged: false) }
        let callbacks = state.withLock { s in
            s.health = result
            s.lastAnswer = .now
            return s.onProbe
        }
        for callback in callbacks { callback(result) }
        notifyChange(keyChanged: keyChanged)
        return result
    }

    /// A request found the token unavailable: report unhealthy now and probe again soon.
    public func reportUnavailable(_ error: KMSError) {
        state.withLock { s in
            s.health.healthy = false
            s.health.reason = HealthMonitor.shortReason(error)
            s.lastAnswer = .now
        }
        requestProbe()
    }

    private func requestProbe() {
        wake.withLock { state.withLock { $0.wakeRequested = true } }
        wake.signalAll()
    }

    /// Starts the probe thread and waits for the first probe, at most `staleAfter`: the socket is bound only once
    /// the token has answered, or once it is known not to answer (then Status says so, with the reason).
    public func start() throws(ServiceError) {
        let first = state.withLock { s -> Bool in
            guard s.started == nil else { return false }
            s.started = .now
            return true
        }
        guard first else { return }
        let prober = ServiceThread.start(name: "p11kms-probe") { [self] in runProbes() }
        let watchdog = ServiceThread.start(name: "p11kms-health") { [self] in runWatchdog() }
        threads.withLock { $0 = [prober, watchdog] }
        firstProbe.wait(until: .now.advanced(by: staleAfter))
        notifyChange(keyChanged: false)
    }

    private func runProbes() {
        var isFirst = true
        while true {
            if state.withLock({ $0.stopping }) { break }
            probe()
            if isFirst {
                firstProbe.open()
                isFirst = false
            }
            let interval = state.withLock { $0.health.healthy } ? refreshInterval : min(refreshInterval, .seconds(1))
            let until = ContinuousClock.now.advanced(by: interval)
            _ = wake.wait(until: until) {
                state.withLock { s in
                    let due = s.wakeRequested || s.stopping
                    s.wakeRequested = false
                    return due
                }
            }
        }
    }

    /// Tells the change callbacks about transitions, including those the probe thread cannot see (a stuck probe).
    private func runWatchdog() {
        while !state.withLock({ $0.stopping }) {
            _ = wake.wait(until: .now.advanced(by: .milliseconds(250))) { state.withLock { $0.stopping } }
            notifyChange(keyChanged: false)
        }
    }

    private func notifyChange(keyChanged: Bool) {
        let (current, callbacks) = state.withLock { s -> (Health?, [@Sendable (Health, Bool) -> Void]) in
            let current = Self.effective(s, now: .now, staleAfter: staleAfter)
            let changed = s.reported.map { $0.healthy != current.healthy || Self.kind($0.reason) != Self.kind(current.reason) } ?? true
            guard changed || keyChanged else { return (nil, []) }
            s.reported = current
            return (current, s.onChange)
        }
        guard let current else { return }
        for callback in callbacks { callback(current, keyChanged) }
    }

    /// Stops the probe threads; waits for them until `deadline`, and at most one second: a probe serves no caller,
    /// so one stuck in the token is left behind rather than waited for.
    public func shutdown(deadline: ContinuousClock.Instant) -> Bool {
        wake.withLock { state.withLock { $0.stopping = true } }
        wake.signalAll()
        let running = threads.withLock { $0 }
        let until = min(deadline, .now + .seconds(1))
        var clean = true
        for thread in running where !thread.join(until: until) { clean = false }
        return clean
    }

    /// A reason without its changing figures ("token not answering for 7s" and "…for 8s" are one state).
    private static func kind(_ reason: String) -> Substring {
        reason.prefix { !$0.isNumber }
    }

    /// Objects labelled like root keys that the token does not describe as one: named (label, key_id), never used.
    static func invalidKeysReason(_ invalid: [InvalidRootKey]) -> String? {
        guard let first = invalid.first else { return nil }
        return invalid.count == 1 ? first.description : "\(first) (and \(invalid.count - 1) more invalid root key objects: 'p11kms keys')"
    }

    static func shortReason(_ error: KMSError) -> String {
        switch error.code {
        case .unavailable: return String(error.message.prefix(120))
        case .failedPrecondition, .invalidArgument, .internal, .deadlineExceeded:
            return "token check failed: \(error.message.prefix(100))"
        }
    }
}

import Dispatch
import Foundation
import PKCS11
import Synchronization

/// What Status reports: healthy only when the token answered recently, with a short reason otherwise.
public struct Health: Sendable, Equatable {
    public var healthy: Bool
    /// "ok" when healthy; otherwise a short reason free of secrets.
    public var reason: String
    public var currentKeyID: String?
    public var checkedAt: ContinuousClock.Instant?

    public static let starting = Health(healthy: false, reason: "starting", currentKeyID: nil, checkedAt: nil)
}

/// Keeps `health` fresh from a background thread (not Swift's cooperative pool): every `refreshInterval` it re-reads
/// the key list from the token (a cheap PKCS#11 call that also picks up rotations by other processes), and every
/// `canaryInterval` it runs a real AES-GCM round trip. Status reads the cached result and never blocks on the token.
/// Real requests feed it too: a request that finds the token unavailable marks it unhealthy at once.
public final class HealthMonitor: Sendable {
    public let service: EnvelopeService
    public let refreshInterval: Duration
    public let canaryInterval: Duration
    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)

    private struct State {
        var health = Health.starting
        var running = false
        var stopping = false
        var lastCanary: ContinuousClock.Instant?
        var onChange: [@Sendable (Health, _ keyChanged: Bool) -> Void] = []
    }

    public init(service: EnvelopeService, refreshInterval: Duration = .seconds(2), canaryInterval: Duration = .seconds(10)) {
        self.service = service
        self.refreshInterval = refreshInterval
        self.canaryInterval = canaryInterval
    }

    public var health: Health { state.withLock { $0.health } }

    /// Called after each probe with the new health and whether the key list changed.
    public func onChange(_ callback: @escaping @Sendable (Health, Bool) -> Void) {
        state.withLock { $0.onChange.append(callback) }
    }

    /// One probe now, on the calling thread.
    @discardableResult
    public func probe() -> Health {
        let now = ContinuousClock.now
        var keyChanged = false
        var result: Health
        do {
            keyChanged = try service.keyRing.refresh()
            let canaryDue = state.withLock { s in s.lastCanary.map { now - $0 >= canaryInterval } ?? true || !s.health.healthy }
            if canaryDue {
                try service.canary()
                state.withLock { $0.lastCanary = now }
            }
            if let current = service.keyRing.current {
                result = Health(healthy: true, reason: "ok", currentKeyID: current.keyID, checkedAt: now)
            } else {
                result = Health(healthy: false, reason: "no current root key in the token", currentKeyID: nil, checkedAt: now)
            }
        } catch let error as PKCS11Error {
            result = Health(healthy: false, reason: HealthMonitor.shortReason(KMSError.token(error)),
                            currentKeyID: service.keyRing.current?.keyID, checkedAt: now)
        } catch let error as KMSError {
            result = Health(healthy: false, reason: HealthMonitor.shortReason(error),
                            currentKeyID: service.keyRing.current?.keyID, checkedAt: now)
        } catch {
            result = Health(healthy: false, reason: "probe failed", currentKeyID: nil, checkedAt: now)
        }
        let callbacks = state.withLock { s in
            s.health = result
            return s.onChange
        }
        for callback in callbacks { callback(result, keyChanged) }
        return result
    }

    /// A request found the token unavailable: report unhealthy now and probe again soon.
    public func reportUnavailable(_ error: KMSError) {
        state.withLock { s in
            s.health = Health(healthy: false, reason: HealthMonitor.shortReason(error),
                              currentKeyID: s.health.currentKeyID, checkedAt: .now)
        }
        wake.signal()
    }

    /// Starts the background probe thread (probing once first, synchronously).
    public func start() {
        let start = state.withLock { s -> Bool in
            guard !s.running else { return false }
            s.running = true
            return true
        }
        guard start else { return }
        probe()
        let thread = Thread { [self] in
            while true {
                let interval = state.withLock { $0.health.healthy } ? refreshInterval : min(refreshInterval, .seconds(1))
                let ms = Int(interval.components.seconds * 1000 + interval.components.attoseconds / 1_000_000_000_000_000)
                _ = wake.wait(timeout: .now() + .milliseconds(ms))
                if state.withLock({ $0.stopping }) { break }
                probe()
            }
            stopped.signal()
        }
        thread.name = "p11kms-health"
        thread.start()
    }

    /// Stops the probe thread and waits for it.
    public func stop() {
        let wasRunning = state.withLock { s -> Bool in
            let running = s.running && !s.stopping
            s.stopping = true
            return running
        }
        guard wasRunning else { return }
        wake.signal()
        stopped.wait()
    }

    static func shortReason(_ error: KMSError) -> String {
        switch error.code {
        case .unavailable: return String(error.message.prefix(120))
        case .failedPrecondition, .invalidArgument, .internal: return "token check failed: \(error.message.prefix(100))"
        }
    }
}

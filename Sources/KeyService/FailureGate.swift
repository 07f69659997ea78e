import Synchronization

/// Rate limit for work that failure paths trigger (a canary round trip, a re-read of the key list): at most one in
/// flight and at most once per `interval`. A caller that is not let through uses the last result instead, so a flood
/// of forged ciphertexts or of Decrypts under a retired key costs the token no more than one extra check a second.
final class FailureGate: Sendable {
    let interval: Duration
    private struct State {
        var running = false
        var lastRun: ContinuousClock.Instant?
        var lastResult: Bool?
    }

    private let state = Mutex(State())

    init(interval: Duration = .seconds(1)) {
        self.interval = interval
    }

    /// Runs `check` if no run is in flight and the last one started at least `interval` ago; otherwise returns the
    /// last result (nil if there is none).
    func run(_ check: () -> Bool) -> Bool? {
        let now = ContinuousClock.now
        let mayRun = state.withLock { s -> Bool in
            if s.running { return false }
            if let last = s.lastRun, now - last < interval { return false }
            s.running = true
            s.lastRun = now
            return true
        }
        guard mayRun else { return state.withLock { $0.lastResult } }
        let result = check()
        state.withLock { s in
            s.running = false
            s.lastResult = result
        }
        return result
    }

    /// Records a result obtained elsewhere (e.g. the health probe's canary), counting as a run now.
    func record(_ result: Bool) {
        state.withLock { s in
            s.lastRun = .now
            s.lastResult = result
        }
    }

    /// The last result if it is at most `age` old.
    func recentResult(within age: Duration) -> Bool? {
        state.withLock { s in
            guard let last = s.lastRun, ContinuousClock.now - last <= age else { return nil }
            return s.lastResult
        }
    }
}

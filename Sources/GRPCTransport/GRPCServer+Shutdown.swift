import CGRPC

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension GRPCServer {
    /// Stops the server within `deadline`, giving in-flight calls `configuration.shutdownGrace` of it (see
    /// `shutdown(gracePeriod:deadline:)`).
    public func shutdown(deadline: ContinuousClock.Instant) -> Bool {
        shutdown(gracePeriod: configuration.shutdownGrace, deadline: deadline)
    }

    /// Stops the server and waits for every handler, however long they take (tests and tools).
    public func shutdown(gracePeriod: Duration) {
        _ = shutdown(gracePeriod: gracePeriod, deadline: nil)
    }

    /// Stops the server: no new calls or connections are accepted, in-flight calls get up to `gracePeriod` to
    /// finish, then the rest are cancelled (their replies are dropped) and their handlers waited for until
    /// `deadline`.
    ///
    /// Returns true when everything stopped and every core object was destroyed. Returns false when a handler was
    /// still running at `deadline` (e.g. blocked in a hung PKCS#11 token): the listener is closed and calls are
    /// cancelled, but the threads and core objects are left as they are, for the process to exit over them.
    /// Idempotent and safe to call from several threads; a server that was never started just becomes unusable.
    @discardableResult
    public func shutdown(gracePeriod: Duration, deadline: ContinuousClock.Instant?) -> Bool {
        state.withLock { state in
            switch state {
            case .idle:
                state = .stopped
                return true
            case .stopped:
                return true
            case .abandoned:
                return false
            case .running(let running):
                let clean = GRPCRuntime.withSignalsBlocked {
                    Self.stop(running, gracePeriod: gracePeriod, deadline: deadline, counters: counters)
                }
                state = clean ? .stopped : .abandoned
                return clean
            }
        }
    }

    /// The teardown order the gRPC core requires (see DESIGN.md, "Facts measured on this machine").
    private static func stop(_ running: Running, gracePeriod: Duration, deadline hardDeadline: ContinuousClock.Instant?,
                             counters: ServerCounters) -> Bool {
        let runtime = running.runtime
        let server = runtime.server.pointer

        // 1. Stop accepting; the tag comes back on queue 0 once no calls or connections remain.
        grpc_server_shutdown_and_notify(server, runtime.queues[0].pointer, ServerRuntime.shutdownTag)

        // 2. Let in-flight calls finish, up to the grace period (never past the hard deadline).
        var graceEnd = ContinuousClock.now.advanced(by: max(gracePeriod, .zero))
        if let hardDeadline { graceEnd = min(graceEnd, hardDeadline) }
        while counters.inFlight.load(ordering: .relaxed) > 0, ContinuousClock.now < graceEnd {
            usleep(1_000)
        }

        // 3. Cancel what is left (and drop idle client connections, which would otherwise keep the
        //    shutdown from completing), then wait for the notification.
        grpc_server_cancel_all_calls(server)
        // Handlers of cancelled calls may still be running; their final batch must be started (it fails fast) and
        // completed before the queues go away. A handler stuck in a C call past the deadline is left behind.
        while counters.inFlight.load(ordering: .relaxed) > 0 {
            if let hardDeadline, ContinuousClock.now >= hardDeadline { return false }
            usleep(1_000)
        }
        guard runtime.shutdownNotified.wait(until: hardDeadline) else { return false }

        // 4. Stop the workers (none is inside a handler any more), then shut the queues down; each thread drains
        //    its queue to GRPC_QUEUE_SHUTDOWN and exits (pending request tags come back with success = 0 and are
        //    freed on the way).
        if let workers = runtime.workers, !workers.stop(deadline: hardDeadline) { return false }
        for queue in runtime.queues { grpc_completion_queue_shutdown(queue.pointer) }
        for thread in running.queueThreads where !thread.join(until: hardDeadline) { return false }

        // 5. Destroy the server, then the queues, then drop our reference on the library.
        runtime.destroy()
        GRPCRuntime.release()
        return true
    }
}

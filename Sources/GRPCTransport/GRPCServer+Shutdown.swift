import CGRPC

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension GRPCServer {
    /// Stops the server: no new calls or connections are accepted, in-flight calls get up to
    /// `gracePeriod` to finish, then the rest are cancelled (handlers still running are waited for,
    /// their replies are dropped).
    ///
    /// Idempotent and safe to call from several threads; every caller returns only after all of the
    /// server's threads have exited and every core object has been destroyed. A server that was
    /// never started just becomes unusable.
    public func shutdown(gracePeriod: Duration) {
        state.withLock { state in
            switch state {
            case .idle:
                state = .stopped
            case .stopped:
                return
            case .running(let running):
                GRPCRuntime.withSignalsBlocked { Self.stop(running, gracePeriod: gracePeriod, counters: counters) }
                state = .stopped
            }
        }
    }

    /// The teardown order the gRPC core requires (see DESIGN.md, "Facts measured on this machine").
    private static func stop(_ running: Running, gracePeriod: Duration, counters: ServerCounters) {
        let runtime = running.runtime
        let server = runtime.server.pointer

        // 1. Stop accepting; the tag comes back on queue 0 once no calls or connections remain.
        grpc_server_shutdown_and_notify(server, runtime.queues[0].pointer, ServerRuntime.shutdownTag)

        // 2. Let in-flight calls finish, up to the grace period.
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: max(gracePeriod, .zero))
        while counters.inFlight.load(ordering: .relaxed) > 0, clock.now < deadline {
            usleep(1_000)
        }

        // 3. Cancel what is left (and drop idle client connections, which would otherwise keep the
        //    shutdown from completing), then wait for the notification.
        grpc_server_cancel_all_calls(server)
        runtime.shutdownNotified.wait()
        // Handlers of cancelled calls may still be running; their final batch must be started
        // (it fails fast) and completed before the queues go away.
        while counters.inFlight.load(ordering: .relaxed) > 0 {
            usleep(1_000)
        }

        // 4. Shut the queues down; each thread drains its queue to GRPC_QUEUE_SHUTDOWN and exits
        //    (pending request tags come back with success = 0 and are freed on the way).
        for queue in runtime.queues { grpc_completion_queue_shutdown(queue.pointer) }
        for thread in running.queueThreads { thread.join() }
        runtime.workers?.stop()

        // 5. Destroy the server, then the queues, then drop our reference on the library.
        runtime.destroy()
        GRPCRuntime.release()
    }
}

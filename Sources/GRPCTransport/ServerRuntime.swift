import CGRPC
import Lifecycle
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Counters shared by a server and its running core objects.
final class ServerCounters: Sendable {
    /// Calls accepted from the core and not yet finished.
    let inFlight = Atomic<Int>(0)
}

/// The core objects of a started server and the loop its completion-queue threads run.
/// Immutable once started; destroyed by `destroy()` after every thread has been joined.
final class ServerRuntime: Sendable {
    struct Method: Sendable {
        let name: String
        /// The handle returned by `grpc_server_register_method`.
        let handle: CHandle
        let handler: UnaryHandler
        /// Runs on the completion-queue thread instead of a worker (never queued behind slow calls).
        let inline: Bool
    }

    /// Tag of `grpc_server_shutdown_and_notify`; call slots are objects, never at address 1.
    static var shutdownTag: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: 1)! }

    let server: CHandle
    let queues: [CHandle]
    let methods: [Method]
    /// `strdup`ed method names passed to `grpc_server_register_method`, freed in `destroy()`.
    let methodNames: [CHandle]
    let workers: WorkerPool?
    let counters: ServerCounters
    let logger: Logger
    let pendingPerQueue: Int
    let observer: GRPCServerConfiguration.RefusalObserver?
    /// Signalled when the shutdown tag comes back: the core has no calls or connections left.
    let shutdownNotified = Latch()

    init(
        server: CHandle, queues: [CHandle], methods: [Method], methodNames: [CHandle], workers: WorkerPool?,
        counters: ServerCounters, logger: Logger, pendingPerQueue: Int,
        observer: GRPCServerConfiguration.RefusalObserver?
    ) {
        self.observer = observer
        self.server = server
        self.queues = queues
        self.methods = methods
        self.methodNames = methodNames
        self.workers = workers
        self.counters = counters
        self.logger = logger
        self.pendingPerQueue = pendingPerQueue
    }

    /// Puts the initial requests on every queue: `pendingPerQueue` per registered method plus a few
    /// catch-all requests that answer unknown methods with `unimplemented`.
    func postInitialRequests() {
        let genericCount = min(4, pendingPerQueue)
        for queueIndex in queues.indices {
            for method in methods.indices {
                for _ in 0..<pendingPerQueue { request(method: method, queueIndex: queueIndex, pool: nil) }
            }
            for _ in 0..<genericCount { request(method: ServerCall.genericMethod, queueIndex: queueIndex, pool: nil) }
        }
    }

    /// Requests one more call of `method` on queue `queueIndex`, reusing a slot from `pool` if any.
    func request(method: Int, queueIndex: Int, pool: CallPool?) {
        let slot = pool?.take() ?? ServerCall(runtime: self, queueIndex: queueIndex)
        if !slot.request(method: method) {
            logger.error("grpc_server_request_call was refused", metadata: ["queue": "\(queueIndex)"])
            pool?.recycle(slot)
        }
    }

    /// The completion-queue loop; returns once the queue has been shut down and drained.
    func runQueue(_ queueIndex: Int) {
        let queue = queues[queueIndex].pointer
        let pool = CallPool(limit: max(256, pendingPerQueue * (methods.count + 1) * 2))
        let forever = gpr_inf_future(GPR_CLOCK_REALTIME)
        while true {
            let event = grpc_completion_queue_next(queue, forever, nil)
            if event.type == GRPC_QUEUE_SHUTDOWN { break }
            guard event.type == GRPC_OP_COMPLETE, let tag = event.tag else { continue }
            if tag == ServerRuntime.shutdownTag {
                shutdownNotified.open()
                continue
            }
            let slot = Unmanaged<ServerCall>.fromOpaque(tag).takeRetainedValue()
            slot.completed(success: event.success != 0, pool: pool)
        }
    }

    /// Destroys the core objects. Requires: shutdown notified, queues shut down and drained, and all
    /// threads joined.
    func destroy() {
        grpc_server_destroy(server.pointer)
        for queue in queues { grpc_completion_queue_destroy(queue.pointer) }
        for name in methodNames { free(name.raw) }
    }
}

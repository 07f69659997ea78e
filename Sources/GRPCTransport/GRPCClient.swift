import CGRPC
import Synchronization

/// A blocking unary gRPC client on the gRPC C core.
///
/// `unary` is thread-safe and may be called from many threads at once: every call uses its own
/// pluck completion queue, taken from a small pool. It blocks the calling thread, so call it from
/// your own threads, not from Swift's cooperative pool in hot paths.
public final class GRPCClient: Sendable {
    public let configuration: GRPCClientConfiguration
    private let state: Mutex<State>

    private struct State {
        var channel: CHandle?
        var closed = false
        var activeCalls = 0
        var idleQueues: [CHandle] = []
    }

    /// Creates the channel. Connecting is lazy: an unreachable target shows up as `unavailable`
    /// on the first call, not here.
    public init(configuration: GRPCClientConfiguration) throws(GRPCStatus) {
        try configuration.validate()
        self.configuration = configuration
        GRPCRuntime.retain()
        let credentials: OpaquePointer
        do {
            credentials = try configuration.makeCredentials()
        } catch {
            GRPCRuntime.release()
            throw error
        }
        defer { grpc_channel_credentials_release(credentials) }

        var arguments = ChannelArguments()
        arguments.set(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, Int32(configuration.maxReceiveMessageSize))
        if let authority = configuration.authority ?? (configuration.isUnix ? "localhost" : nil) {
            arguments.set(GRPC_ARG_DEFAULT_AUTHORITY, authority)
        }
        let channel = GRPCRuntime.withSignalsBlocked {
            arguments.withUnsafeArguments { grpc_channel_create(configuration.coreTarget, credentials, $0) }
        }
        guard let channel else {
            GRPCRuntime.release()
            throw GRPCStatus(.invalidArgument, "the gRPC core could not create a channel to \(configuration.target)")
        }
        state = Mutex(State(channel: CHandle(channel)))
    }

    deinit {
        // No call can be running: each one holds a reference to the client.
        let leftovers = state.withLock { state in
            state.closed = true
            let result = (state.channel, state.idleQueues)
            state.channel = nil
            state.idleQueues = []
            return result
        }
        Self.release(channel: leftovers.0, queues: leftovers.1)
    }

    /// Stops new calls; the channel is destroyed as soon as the calls in progress have finished.
    /// Idempotent. Later calls fail with `unavailable`.
    public func close() {
        let leftovers = state.withLock { state in
            state.closed = true
            let queues = state.idleQueues
            state.idleQueues = []
            guard state.activeCalls == 0 else { return (CHandle?.none, queues) }
            let channel = state.channel
            state.channel = nil
            return (channel, queues)
        }
        Self.release(channel: leftovers.0, queues: leftovers.1)
    }

    /// Performs a unary call and returns the response message.
    ///
    /// - Parameters:
    ///   - method: the full method path, e.g. "/etcdserverpb.KV/Range".
    ///   - metadata: custom initial metadata; keys must be lowercase (e.g. etcd's "token").
    ///   - timeout: the call's deadline, sent to the server too.
    /// - Throws: the server's status, `deadlineExceeded`, `unavailable` when the server cannot be
    ///   reached (or the client is closed), `invalidArgument` for illegal metadata.
    public func unary(
        method: String,
        request: [UInt8],
        metadata: [(key: String, value: String)] = [],
        timeout: Duration = .seconds(10)
    ) throws(GRPCStatus) -> [UInt8] {
        let (channel, queue) = try checkOut()
        defer { checkIn(queue) }
        // The core may grow its thread pools from this thread: keep termination signals away from them.
        return try GRPCRuntime.withSignalsBlocked { () throws(GRPCStatus) in
            try UnaryCall.perform(
                channel: channel.pointer, queue: queue.pointer, method: method, request: request,
                metadata: metadata, timeout: timeout)
        }
    }

    private func checkOut() throws(GRPCStatus) -> (channel: CHandle, queue: CHandle) {
        let taken = state.withLock { state -> (CHandle, CHandle?)? in
            guard !state.closed, let channel = state.channel else { return nil }
            state.activeCalls += 1
            return (channel, state.idleQueues.popLast())
        }
        guard let (channel, queue) = taken else {
            throw GRPCStatus(.unavailable, "the client has been closed")
        }
        return (channel, queue ?? CHandle(grpc_completion_queue_create_for_pluck(nil)!))
    }

    private func checkIn(_ queue: CHandle) {
        let leftovers = state.withLock { state -> (CHandle?, CHandle?) in
            state.activeCalls -= 1
            guard state.closed else {
                state.idleQueues.append(queue)
                return (nil, nil)
            }
            guard state.activeCalls == 0 else { return (nil, queue) }
            let channel = state.channel
            state.channel = nil
            return (channel, queue)
        }
        Self.release(channel: leftovers.0, queues: leftovers.1.map { [$0] } ?? [])
    }

    private static func release(channel: CHandle?, queues: [CHandle]) {
        for queue in queues {
            // Every event of a finished call has been plucked, so the queue is empty.
            grpc_completion_queue_shutdown(queue.pointer)
            grpc_completion_queue_destroy(queue.pointer)
        }
        if let channel {
            grpc_channel_destroy(channel.pointer)
            GRPCRuntime.release()
        }
    }
}

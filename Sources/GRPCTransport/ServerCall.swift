import CGRPC
import Logging

/// One server-side call slot: the C out-parameters the core fills in for a requested call, and the
/// small state machine that drives that call to completion. Slots are recycled per completion queue.
///
/// Life of a slot (at most one core operation is outstanding at any time, and its tag holds one
/// retain of the slot, taken with `Unmanaged.passRetained` and given back when the event arrives):
///   1. `.requested`: `grpc_server_request_registered_call` (payload read by the core) or, for
///      unknown methods, `grpc_server_request_call`.
///   2. The completion-queue thread copies the request, then runs the handler inline or hands the
///      slot to a worker thread.
///   3. `.sending`: whoever ran the handler starts the final batch (initial metadata, message, status,
///      close) and must not touch the slot afterwards.
///   4. The batch completes on the completion-queue thread, which releases the call and recycles.
///
/// `@unchecked Sendable`: the slot owns raw C pointers and mutable state, but it is only ever used by
/// one thread at a time, and every hand-off (completion queue event, worker queue mutex) orders
/// the previous owner's writes before the next owner's reads.
final class ServerCall: @unchecked Sendable {
    private enum Phase { case idle, requested, sending }

    static let genericMethod = -1

    let runtime: ServerRuntime
    let queueIndex: Int
    private var phase = Phase.idle
    /// Index into `runtime.methods`, or `genericMethod` for the catch-all request.
    private var methodIndex = ServerCall.genericMethod
    private var request: [UInt8] = []
    /// The call's deadline, read once when the call arrives (nil: none). Written before the slot is handed to a
    /// worker, read by the worker pool under its lock.
    private(set) var deadlineInstant: ContinuousClock.Instant?

    private let callSlot = UnsafeMutablePointer<OpaquePointer?>.allocate(capacity: 1)
    private let details = UnsafeMutablePointer<grpc_call_details>.allocate(capacity: 1)
    private let deadline = UnsafeMutablePointer<gpr_timespec>.allocate(capacity: 1)
    private let metadata = UnsafeMutablePointer<grpc_metadata_array>.allocate(capacity: 1)
    private let payload = UnsafeMutablePointer<UnsafeMutablePointer<grpc_byte_buffer>?>.allocate(capacity: 1)
    private let cancelled = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
    private static let opCapacity = 4
    private let ops = UnsafeMutablePointer<grpc_op>.allocate(capacity: ServerCall.opCapacity)
    private var sendBuffer: UnsafeMutablePointer<grpc_byte_buffer>?

    init(runtime: ServerRuntime, queueIndex: Int) {
        self.runtime = runtime
        self.queueIndex = queueIndex
        callSlot.initialize(to: nil)
        details.initialize(to: grpc_call_details())
        grpc_call_details_init(details)
        deadline.initialize(to: gpr_timespec())
        metadata.initialize(to: grpc_metadata_array())
        grpc_metadata_array_init(metadata)
        payload.initialize(to: nil)
        cancelled.initialize(to: 0)
        ops.initialize(repeating: grpc_op(), count: ServerCall.opCapacity)
    }

    deinit {
        if let buffer = payload.pointee { grpc_byte_buffer_destroy(buffer) }
        if let sendBuffer { grpc_byte_buffer_destroy(sendBuffer) }
        if let call = callSlot.pointee { grpc_call_unref(call) }
        grpc_call_details_destroy(details)
        grpc_metadata_array_destroy(metadata)
        callSlot.deallocate()
        details.deallocate()
        deadline.deallocate()
        metadata.deallocate()
        payload.deallocate()
        cancelled.deallocate()
        ops.deallocate()
    }

    /// Asks the core for the next call of `method` (an index into `runtime.methods`, or
    /// `genericMethod`). Returns false if the core refused the request.
    func request(method: Int) -> Bool {
        methodIndex = method
        phase = .requested
        let tag = Unmanaged.passRetained(self).toOpaque()
        let queue = runtime.queues[queueIndex].pointer
        let server = runtime.server.pointer
        let result: grpc_call_error
        if method == ServerCall.genericMethod {
            result = grpc_server_request_call(server, callSlot, details, metadata, queue, queue, tag)
        } else {
            result = grpc_server_request_registered_call(
                server, runtime.methods[method].handle.raw, callSlot, deadline, metadata, payload, queue, queue, tag)
        }
        guard result == GRPC_CALL_OK else {
            Unmanaged<ServerCall>.fromOpaque(tag).release()
            phase = .idle
            return false
        }
        return true
    }

    /// Handles the completion of this slot's outstanding operation (completion-queue thread only).
    func completed(success: Bool, pool: CallPool) {
        switch phase {
        case .requested:
            guard success else {
                // The server is shutting down: the request will never be matched.
                phase = .idle
                pool.recycle(self)
                return
            }
            runtime.request(method: methodIndex, queueIndex: queueIndex, pool: pool)
            runtime.counters.inFlight.add(1, ordering: .relaxed)
            accept(pool: pool)
        case .sending:
            finish(pool: pool)
        case .idle:
            preconditionFailure("completion for an idle server call slot")
        }
    }

    private func accept(pool: CallPool) {
        if methodIndex == ServerCall.genericMethod {
            let method = details.pointee.method.string
            sendFinal(GRPCStatus(.unimplemented, "unknown method \(method)"), response: nil, pool: pool)
            return
        }
        guard let buffer = payload.pointee else {
            sendFinal(GRPCStatus(.invalidArgument, "the client sent no request message"), response: nil, pool: pool)
            return
        }
        payload.pointee = nil
        let bytes = ByteBuffers.copy(buffer)
        grpc_byte_buffer_destroy(buffer)
        guard let bytes else {
            sendFinal(GRPCStatus(.invalidArgument, "the request message could not be decoded"), response: nil, pool: pool)
            return
        }
        request = bytes
        let method = runtime.methods[methodIndex]
        deadlineInstant = Self.instant(deadline.pointee)
        guard let workers = runtime.workers, !method.inline else {
            runHandler(pool: pool)
            return
        }
        if let deadlineInstant, deadlineInstant <= .now {
            answerExpired(pool: pool)
            return
        }
        switch workers.submit(self) {
        case .queued:
            break
        case .accepted(let expired):
            for call in expired { call.answerExpired(pool: nil) }
        case .full(let expired):
            for call in expired { call.answerExpired(pool: nil) }
            request = []
            runtime.observer?(method.name, .queueFull)
            sendFinal(GRPCStatus(.resourceExhausted, "the server is overloaded: \(workers.limit) calls are already waiting"),
                      response: nil, pool: pool)
        }
    }

    /// A worker took the call from the queue: runs it unless its deadline passed while it waited.
    func runQueued() {
        if let deadlineInstant, deadlineInstant <= .now {
            answerExpired(pool: nil)
            return
        }
        runHandler()
    }

    /// Answers a call whose deadline passed before it started; its handler never runs.
    private func answerExpired(pool: CallPool?) {
        request = []
        runtime.observer?(runtime.methods[methodIndex].name, .deadlineExpired)
        sendFinal(GRPCStatus(.deadlineExceeded, "the deadline passed before the call started"), response: nil, pool: pool)
    }

    /// Runs the handler and starts the final batch (worker thread, or the completion-queue thread
    /// when `pool` is given).
    func runHandler(pool: CallPool? = nil) {
        let method = runtime.methods[methodIndex]
        let context = ServerCallContext(
            method: method.name, metadata: metadata.pointee.copyPairs(), deadline: deadlineInstant)
        let input = request
        request = []
        do {
            let output = try method.handler(input, context)
            sendFinal(GRPCStatus(.ok, ""), response: output, pool: pool)
        } catch let status as GRPCStatus {
            sendFinal(status, response: nil, pool: pool)
        } catch {
            runtime.logger.error(
                "handler failed with a non-status error; replying 'internal'",
                metadata: ["method": "\(method.name)", "error_type": "\(String(reflecting: type(of: error)))"])
            sendFinal(GRPCStatus(.internal, "internal error"), response: nil, pool: pool)
        }
    }

    /// Starts the final batch. After a successful `grpc_call_start_batch` the slot belongs to the
    /// completion-queue thread again and must not be touched here.
    private func sendFinal(_ status: GRPCStatus, response: [UInt8]?, pool: CallPool?) {
        for index in 0..<ServerCall.opCapacity { ops[index] = grpc_op() }
        var count = 0
        ops[count].op = GRPC_OP_SEND_INITIAL_METADATA
        count += 1
        if let response, status.code == .ok {
            let buffer = ByteBuffers.make(response)
            sendBuffer = buffer
            ops[count].op = GRPC_OP_SEND_MESSAGE
            ops[count].data.send_message.send_message = buffer
            count += 1
        }
        let statusIndex = count
        ops[statusIndex].op = GRPC_OP_SEND_STATUS_FROM_SERVER
        ops[statusIndex].data.send_status_from_server.status = status.code.coreValue
        count += 1
        ops[count].op = GRPC_OP_RECV_CLOSE_ON_SERVER
        ops[count].data.recv_close_on_server.cancelled = cancelled
        count += 1

        phase = .sending
        let call = callSlot.pointee
        let tag = Unmanaged.passRetained(self).toOpaque()
        var message = status.message.isEmpty ? nil : grpc_slice.copying(status.message)
        let result: grpc_call_error
        if message != nil {
            result = withUnsafeMutablePointer(to: &message!) { slice in
                ops[statusIndex].data.send_status_from_server.status_details = slice
                return grpc_call_start_batch(call, ops, count, tag, nil)
            }
            grpc_slice_unref(message!)
        } else {
            result = grpc_call_start_batch(call, ops, count, tag, nil)
        }
        if result != GRPC_CALL_OK {
            // No completion will arrive: clean up here.
            Unmanaged<ServerCall>.fromOpaque(tag).release()
            runtime.logger.error("could not start the final batch of a call", metadata: ["result": "\(result.rawValue)"])
            finish(pool: pool)
        }
    }

    /// Releases everything the finished call held and returns the slot to `pool` (if given).
    private func finish(pool: CallPool?) {
        if let sendBuffer {
            grpc_byte_buffer_destroy(sendBuffer)
            self.sendBuffer = nil
        }
        if let call = callSlot.pointee {
            grpc_call_unref(call)
            callSlot.pointee = nil
        }
        // The metadata elements belonged to the call; keep the array's storage for the next call.
        metadata.pointee.count = 0
        if methodIndex == ServerCall.genericMethod {
            grpc_call_details_destroy(details)
            grpc_call_details_init(details)
        }
        phase = .idle
        deadlineInstant = nil
        runtime.counters.inFlight.subtract(1, ordering: .relaxed)
        pool?.recycle(self)
    }

    static func instant(_ deadline: gpr_timespec) -> ContinuousClock.Instant? {
        if deadline.tv_sec == Int64.max || deadline.clock_type == GPR_TIMESPAN { return nil }
        let remaining = gpr_time_sub(deadline, gpr_now(deadline.clock_type))
        return ContinuousClock.now.advanced(by: .seconds(remaining.tv_sec) + .nanoseconds(Int64(remaining.tv_nsec)))
    }
}

/// Recycled call slots of one completion queue; only its thread touches it.
final class CallPool {
    private var slots: [ServerCall] = []
    private let limit: Int

    init(limit: Int) { self.limit = limit }

    func take() -> ServerCall? { slots.popLast() }

    func recycle(_ call: ServerCall) {
        if slots.count < limit { slots.append(call) }
    }
}

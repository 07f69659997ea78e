import CGRPC

/// One blocking unary call: a single batch of six operations on a pluck completion queue.
enum UnaryCall {
    /// The out-parameters the core writes during the batch; kept at a stable address.
    private struct Results {
        var initialMetadata = grpc_metadata_array()
        var trailingMetadata = grpc_metadata_array()
        var response: UnsafeMutablePointer<grpc_byte_buffer>?
        var status = GRPC_STATUS_OK
        var details = grpc_empty_slice()
    }

    private static let opCount = 6

    static func perform(
        channel: OpaquePointer,
        queue: OpaquePointer,
        method: String,
        request: [UInt8],
        metadata: [(key: String, value: String)],
        timeout: Duration
    ) throws(GRPCStatus) -> [UInt8] {
        let methodSlice = grpc_slice.copying(method)
        let call = grpc_channel_create_call(channel, nil, 0, queue, methodSlice, nil, deadline(after: timeout), nil)
        grpc_slice_unref(methodSlice)
        guard let call else { throw GRPCStatus(.internal, "the gRPC core could not create a call for \(method)") }
        defer { grpc_call_unref(call) }

        var sent = metadata.map { pair in
            var entry = grpc_metadata()
            entry.key = grpc_slice.copying(pair.key)
            entry.value = grpc_slice.copying(pair.value)
            return entry
        }
        defer {
            for entry in sent {
                grpc_slice_unref(entry.key)
                grpc_slice_unref(entry.value)
            }
        }
        let requestBuffer = ByteBuffers.make(request)
        defer { grpc_byte_buffer_destroy(requestBuffer) }

        let outcome: Result<[UInt8], GRPCStatus> = sent.withUnsafeMutableBufferPointer { sentMetadata in
            withUnsafeTemporaryAllocation(of: grpc_op.self, capacity: opCount) { opsBuffer in
                withUnsafeTemporaryAllocation(of: Results.self, capacity: 1) { resultsBuffer in
                    let ops = opsBuffer.baseAddress!
                    let results = resultsBuffer.baseAddress!
                    results.initialize(to: Results())
                    defer { cleanUp(results) }
                    ops.initialize(repeating: grpc_op(), count: opCount)

                    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA
                    ops[0].data.send_initial_metadata.count = sentMetadata.count
                    ops[0].data.send_initial_metadata.metadata = sentMetadata.baseAddress
                    ops[1].op = GRPC_OP_SEND_MESSAGE
                    ops[1].data.send_message.send_message = requestBuffer
                    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT
                    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA
                    ops[3].data.recv_initial_metadata.recv_initial_metadata = results.pointer(to: \.initialMetadata)
                    ops[4].op = GRPC_OP_RECV_MESSAGE
                    ops[4].data.recv_message.recv_message = results.pointer(to: \.response)
                    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT
                    ops[5].data.recv_status_on_client.trailing_metadata = results.pointer(to: \.trailingMetadata)
                    ops[5].data.recv_status_on_client.status = results.pointer(to: \.status)
                    ops[5].data.recv_status_on_client.status_details = results.pointer(to: \.details)

                    let tag = UnsafeMutableRawPointer(ops)
                    let started = grpc_call_start_batch(call, ops, opCount, tag, nil)
                    guard started == GRPC_CALL_OK else {
                        return .failure(GRPCStatus(callError: started, operation: "starting the call"))
                    }
                    // The call's deadline guarantees the batch completes, so wait without a limit.
                    let event = grpc_completion_queue_pluck(queue, tag, gpr_inf_future(GPR_CLOCK_REALTIME), nil)
                    guard event.type == GRPC_OP_COMPLETE else {
                        return .failure(GRPCStatus(.internal, "unexpected completion queue event \(event.type.rawValue)"))
                    }
                    return interpret(results.pointee)
                }
            }
        }
        return try outcome.get()
    }

    private static func interpret(_ results: Results) -> Result<[UInt8], GRPCStatus> {
        let code = GRPCStatusCode(coreValue: results.status.rawValue)
        guard code == .ok else {
            return .failure(GRPCStatus(code, results.details.string))
        }
        guard let response = results.response else {
            return .failure(GRPCStatus(.internal, "the server sent an OK status without a response message"))
        }
        guard let bytes = ByteBuffers.copy(response) else {
            return .failure(GRPCStatus(.internal, "the response message could not be decoded"))
        }
        return .success(bytes)
    }

    private static func cleanUp(_ results: UnsafeMutablePointer<Results>) {
        grpc_metadata_array_destroy(results.pointer(to: \.initialMetadata))
        grpc_metadata_array_destroy(results.pointer(to: \.trailingMetadata))
        if let response = results.pointee.response { grpc_byte_buffer_destroy(response) }
        grpc_slice_unref(results.pointee.details)
        results.deinitialize(count: 1)
    }

    /// `timeout` from now on the monotonic clock (negative means already expired).
    static func deadline(after timeout: Duration) -> gpr_timespec {
        let (seconds, attoseconds) = timeout.components
        if seconds < 0 || (seconds == 0 && attoseconds <= 0) {
            return gpr_now(GPR_CLOCK_MONOTONIC)
        }
        if seconds > 100 * 365 * 24 * 3600 {
            return gpr_inf_future(GPR_CLOCK_MONOTONIC)
        }
        let span = gpr_timespec(
            tv_sec: seconds, tv_nsec: Int32(attoseconds / 1_000_000_000), clock_type: GPR_TIMESPAN)
        return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), span)
    }
}

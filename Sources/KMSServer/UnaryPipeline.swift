import GRPCTransport
import KeyService
import Logging
import SwiftProtobuf

/// The one path every KMS call (v1 and v2) takes: decode → deadline check → time → run → metrics → map errors →
/// serialize. The KMS adapters only say how to turn a request into a response with the key service.
struct UnaryPipeline: Sendable {
    let metrics: KMSMetrics
    let serving: ServingMetrics
    let health: HealthMonitor
    let logger: Logger

    /// What a call's body returns: the response and the root key it used (for metrics and logs).
    struct Output<Response: SwiftProtobuf.Message>: Sendable {
        var response: Response
        var keyID: String?
    }

    /// Builds the handler of one method.
    /// - Parameters:
    ///   - method: the metric/log name ("Encrypt").
    ///   - usesToken: the body calls the token: a call whose deadline has passed is not started, and the time
    ///     inside it counts as a worker in the token.
    ///   - context: log metadata taken from the request (client-controlled strings are cut short).
    func unary<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>(
        _ method: String, _ requestType: Request.Type, usesToken: Bool, logExtra: Logger.Metadata = [:],
        context: @escaping @Sendable (Request) -> Logger.Metadata = { _ in [:] },
        _ body: @escaping @Sendable (Request, ContinuousClock.Instant?) throws(KMSError) -> Output<Response>
    ) -> UnaryHandler {
        let requestName = String(describing: Request.protoMessageName.split(separator: ".").last ?? "request")
        return { bytes, call in
            let started = ContinuousClock.now
            let request: Request
            do {
                request = try Request(serializedBytes: bytes)
            } catch {
                metrics.record(method: method, outcome: .invalidInput, since: started)
                throw GRPCStatus(.invalidArgument, "malformed \(requestName)")
            }
            // Log metadata is built only when a line is written (a debug line, or a failure), never per call.
            func metadata() -> Logger.Metadata { logExtra.merging(context(request)) { a, _ in a } }
            do throws(KMSError) {
                if usesToken, let deadline = call.deadline, deadline <= .now {
                    serving.refused(path: call.method, .deadlineExpired)
                    throw KMSError(.deadlineExceeded, "the deadline passed before the call started")
                }
                let output: Output<Response>
                if usesToken {
                    serving.inToken.add(1, ordering: .relaxed)
                    defer { serving.inToken.subtract(1, ordering: .relaxed) }
                    output = try body(request, call.deadline)
                } else {
                    output = try body(request, call.deadline)
                }
                metrics.record(method: method, outcome: .success, since: started, keyID: output.keyID)
                if logger.logLevel <= .debug {
                    var fields = metadata()
                    if let keyID = output.keyID { fields["key_id"] = "\(keyID)" }
                    logger.debug("\(method.lowercased())", metadata: fields)
                }
                return serialize(output.response)
            } catch {
                throw reportFailure(method, error, since: started, metadata: metadata(), metrics: metrics, health: health,
                                    logger: logger)
            }
        }
    }
}

/// Serialises a response. Encoding these plain messages cannot fail (no required fields, no Any); an empty
/// reply would in any case be rejected by the caller's checks rather than misread.
func serialize(_ message: some SwiftProtobuf.Message) -> [UInt8] {
    (try? message.serializedBytes()) ?? []
}

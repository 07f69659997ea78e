/// A long-running part of the process (the token probe, the HTTP listener, the gRPC server on its socket): started
/// once, stopped once, each step bounded.
///
/// `start` returns once the part is ready (or throws, leaving nothing running). `shutdown(deadline:)` stops it and
/// waits at most until `deadline`; it returns false when something (typically a thread inside a hung PKCS#11 call)
/// was still running at the deadline and was left behind. Both are blocking and must be called from threads of their
/// own, never from Swift's cooperative pool.
public protocol Service: AnyObject, Sendable {
    var name: String { get }
    func start() throws(ServiceError)
    func shutdown(deadline: ContinuousClock.Instant) -> Bool
}

/// Why a service could not start, in words meant for the admin.
public struct ServiceError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

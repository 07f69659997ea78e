import Foundation

/// Runs blocking work (PKCS#11, blocking gRPC calls) on a thread of its own, off Swift's cooperative pool.
public enum Blocking {
    public static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            let thread = Thread { continuation.resume(returning: body()) }
            thread.start()
        }
    }
}

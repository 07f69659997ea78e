// Full gRPC method paths ("/<package>.<Service>/<Method>") for the etcd v3
// calls this project makes. No gRPC stubs are generated; the transport uses
// these paths.

public enum EtcdMethod {
    public static let range = "/etcdserverpb.KV/Range"
    public static let put = "/etcdserverpb.KV/Put"
    public static let deleteRange = "/etcdserverpb.KV/DeleteRange"
    public static let authenticate = "/etcdserverpb.Auth/Authenticate"

    /// Every method path above.
    public static let all: [String] = [range, put, deleteRange, authenticate]
}

// Full gRPC method paths ("/<package>.<Service>/<Method>") for the KMS plugin
// services. No gRPC stubs are generated; the transport uses these paths.

/// KMS v2 (`package v2`), served to kube-apiserver 1.27 and later.
public enum KMSv2Method {
    public static let service = "v2.KeyManagementService"
    public static let status = "/v2.KeyManagementService/Status"
    public static let decrypt = "/v2.KeyManagementService/Decrypt"
    public static let encrypt = "/v2.KeyManagementService/Encrypt"

    /// Every v2 method path.
    public static let all: [String] = [status, decrypt, encrypt]
}

/// KMS v1 (`package v1beta1`, deprecated upstream).
public enum KMSv1Method {
    public static let service = "v1beta1.KeyManagementService"
    public static let version = "/v1beta1.KeyManagementService/Version"
    public static let decrypt = "/v1beta1.KeyManagementService/Decrypt"
    public static let encrypt = "/v1beta1.KeyManagementService/Encrypt"

    /// Every v1 method path.
    public static let all: [String] = [version, decrypt, encrypt]

    /// The version string the apiserver sends in every v1 request and
    /// requires back from Version.
    public static let apiVersion = "v1beta1"
}

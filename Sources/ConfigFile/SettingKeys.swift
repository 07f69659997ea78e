/// One setting: its config-file key (also the long flag name), its environment twin, its default and an example
/// value shown in error messages.
public struct SettingKey: Sendable {
    public let key: String
    public let env: String
    public let defaultValue: String?
    public let example: String
    public let kind: Kind

    /// How a value is read. Every source (flag, environment, file) gives text; the kind says what text is valid.
    public enum Kind: Sendable {
        case text
        /// Octal permission bits, e.g. 0660 (a leading 0 is optional: 660 is octal too, as for chmod).
        case octalMode
        case integer
        case seconds
        case boolean
    }
}

/// Every setting, its environment twin and default. Keys are the long flag names; the config file uses them too.
public enum SettingKeys {
    public static let table: [SettingKey] = [
        SettingKey(key: "listen", env: "P11KMS_LISTEN", defaultValue: "unix:///var/run/kms/p11kms.sock",
                   example: "\"unix:///var/run/kms/p11kms.sock\"", kind: .text),
        SettingKey(key: "module", env: "P11KMS_MODULE", defaultValue: "/usr/lib/softhsm/libsofthsm2.so",
                   example: "/usr/lib/softhsm/libsofthsm2.so", kind: .text),
        SettingKey(key: "token-label", env: "P11KMS_TOKEN_LABEL", defaultValue: nil, example: "kms", kind: .text),
        SettingKey(key: "pin-file", env: "P11KMS_PIN_FILE", defaultValue: nil, example: "/etc/p11kms/pin", kind: .text),
        SettingKey(key: "softhsm-conf", env: "P11KMS_SOFTHSM_CONF", defaultValue: nil, example: "/etc/p11kms/softhsm2.conf",
                   kind: .text),
        SettingKey(key: "max-sessions", env: "P11KMS_MAX_SESSIONS", defaultValue: "8", example: "8", kind: .integer),
        SettingKey(key: "socket-mode", env: "P11KMS_SOCKET_MODE", defaultValue: "0600", example: "0660", kind: .octalMode),
        SettingKey(key: "socket-group", env: "P11KMS_SOCKET_GROUP", defaultValue: nil, example: "kube-apiserver", kind: .text),
        SettingKey(key: "status-version", env: "P11KMS_STATUS_VERSION", defaultValue: "v2", example: "v2", kind: .text),
        SettingKey(key: "disable-v1", env: "P11KMS_DISABLE_V1", defaultValue: "false", example: "true", kind: .boolean),
        SettingKey(key: "worker-threads", env: "P11KMS_WORKER_THREADS", defaultValue: "4", example: "4", kind: .integer),
        SettingKey(key: "completion-queue-threads", env: "P11KMS_CQ_THREADS", defaultValue: "1", example: "1", kind: .integer),
        SettingKey(key: "http-listen", env: "P11KMS_HTTP_LISTEN", defaultValue: "127.0.0.1:8787",
                   example: "\"127.0.0.1:8787\" (or off)", kind: .text),
        SettingKey(key: "log-format", env: "P11KMS_LOG_FORMAT", defaultValue: "text", example: "json", kind: .text),
        SettingKey(key: "log-level", env: "P11KMS_LOG_LEVEL", defaultValue: "info", example: "info", kind: .text),
        SettingKey(key: "shutdown-grace", env: "P11KMS_SHUTDOWN_GRACE", defaultValue: "5", example: "5", kind: .seconds),
        SettingKey(key: "probe-interval", env: "P11KMS_PROBE_INTERVAL", defaultValue: "2", example: "2", kind: .seconds),
        SettingKey(key: "canary-interval", env: "P11KMS_CANARY_INTERVAL", defaultValue: "10", example: "10", kind: .seconds),
        SettingKey(key: "health-stale-after", env: "P11KMS_HEALTH_STALE_AFTER", defaultValue: nil, example: "6",
                   kind: .seconds),
        SettingKey(key: "max-queued-calls", env: "P11KMS_MAX_QUEUED_CALLS", defaultValue: "1024", example: "1024",
                   kind: .integer),
        SettingKey(key: "session-key-copies", env: "P11KMS_SESSION_KEY_COPIES", defaultValue: "true", example: "false",
                   kind: .boolean),
        SettingKey(key: "allow-abstract-socket", env: "P11KMS_ALLOW_ABSTRACT_SOCKET", defaultValue: "false",
                   example: "true", kind: .boolean),
        SettingKey(key: "state-dir", env: "P11KMS_STATE_DIR", defaultValue: "/var/lib/p11kms/state",
                   example: "/var/lib/p11kms/state", kind: .text),
        // SoftHSM token-directory backups kept in <state-dir>/token-backups (0: none).
        SettingKey(key: "token-backups", env: "P11KMS_TOKEN_BACKUPS", defaultValue: "10", example: "10", kind: .integer),
        // serve and init: start although the token lacks keys the plugin has used (a token restored from an old copy).
        SettingKey(key: "accept-key-rollback", env: "P11KMS_ACCEPT_KEY_ROLLBACK", defaultValue: "false", example: "true",
                   kind: .boolean),
        // Encryptions per root key before Encrypt refuses it (AES-GCM with random IVs: at most 2^32).
        SettingKey(key: "encryption-budget", env: "P11KMS_ENCRYPTION_BUDGET", defaultValue: "4294967296",
                   example: "4294967296", kind: .integer),
        // destroy --audit-json: the oldest audit accepted, and the apiserver's --etcd-prefix it must have read.
        SettingKey(key: "audit-max-age", env: "P11KMS_AUDIT_MAX_AGE", defaultValue: "1h", example: "1h", kind: .text),
        SettingKey(key: "etcd-prefix", env: "P11KMS_ETCD_PREFIX", defaultValue: "/registry", example: "/registry",
                   kind: .text),
    ]

    public static func entry(_ key: String) -> SettingKey? {
        table.first { $0.key == key }
    }

    public static func env(for key: String) -> String {
        entry(key)!.env
    }

    /// Parses octal permission bits as written ("0660", "660"); nil unless 0...0o777.
    public static func octalMode(_ text: String) -> UInt32? {
        guard !text.isEmpty, text.count <= 5, let value = UInt32(text, radix: 8), value <= 0o777 else { return nil }
        return value
    }

    /// Octal with a leading zero, as chmod and the config file write it: 432 -> "0660".
    public static func octalText(_ mode: UInt32) -> String {
        let digits = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}

import Logging
import PKCS11

/// The serve-time setup of the session-key-copy fast path: on or off, and one log line when the module refuses it.
public enum SessionKeyCopyLog {
    public static func configure(_ copies: SessionKeyCopies, enabled: Bool, logger: Logger) {
        copies.setEnabled(enabled)
        if !enabled { logger.info("session-object key copies are off: AES-GCM runs with the token objects") }
        copies.onRefused { reason in
            logger.warning("the PKCS#11 module refused a session-object copy of a root key; using the token object (slower)",
                           metadata: ["reason": "\(reason)"])
        }
    }
}

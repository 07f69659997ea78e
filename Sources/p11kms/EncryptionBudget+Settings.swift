import ArgumentParser
import Foundation
import KeyService
import Prometheus

/// `--encryption-budget N` and what `serve` exports of the budget: `p11kms_encryption_budget` and, per key,
/// `p11kms_key_encryptions_reserved{key_id}` (the count stored in the token, updated at every reservation).
enum BudgetSetting {
    static func value(_ settings: SettingsResolver, flag: String?) throws -> UInt64 {
        UInt64(try settings.int("encryption-budget", flag: flag, range: 1...(1 << 32)))
    }

    static var reservedDescriptor: MetricNameDescriptor { MetricNameDescriptor(
        metricName: "p11kms_key_encryptions_reserved", unitName: "",
        helpText: "Encryptions reserved under a root key, stored in the token (never less than those made).") }

    static func make(ring: KeyRing, settings: SettingsResolver, flag: String?,
                     registry: PrometheusCollectorRegistry) throws -> EncryptionBudget {
        let value = try value(settings, flag: flag)
        registry.makeGauge(descriptor: MetricNameDescriptor(
            metricName: "p11kms_encryption_budget", unitName: "",
            helpText: "Encryptions a root key may make before Encrypt refuses it.")).set(Double(value))
        let budget = EncryptionBudget(token: ring.token, budget: value) { keyID, reserved in
            registry.makeGauge(descriptor: reservedDescriptor, labels: [("key_id", keyID)])
                .set(Double(reserved))
        }
        let known = Set(ring.keys.map(\.keyID))
        if let stored = try? EncryptionBudget.readAll(ring.token) {
            for (keyID, reserved) in stored where known.contains(keyID) {
                registry.makeGauge(descriptor: reservedDescriptor, labels: [("key_id", keyID)])
                    .set(Double(reserved))
            }
        }
        return budget
    }
}

/// A new key's AES-GCM self-test is an encryption under it: counted in its budget (exactly one, no block). A
/// failure only warns: the key is made.
func countSelfTest(_ ring: KeyRing, _ key: RootKey) {
    do {
        try EncryptionBudget.countOne(ring.token, key.id)
    } catch {
        FileHandle.standardError.write(Data("p11kms: warning: the self-test of \(key.keyID) was not counted in its encryption budget: \(error)\n".utf8))
    }
}

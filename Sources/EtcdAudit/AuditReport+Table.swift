/// The readable report: counts by state, the keys found under this provider, counts by namespace, the Secrets that
/// are not current (the first `listLimit` of them) and the `--verify` outcome.
extension AuditReport {
    public func renderTable(listLimit: Int = 50) -> String {
        var out = ""
        let where_ = scannedPrefixes.count == 1 ? scannedPrefixes[0] : "\(scannedPrefixes.count) key ranges"
        let what = scope.resources == ["secrets"] ? "Secrets" : "Objects (\(scope.resources.joined(separator: ", ")))"
        out += "\(what) under \(where_) at etcd revision \(revision): \(total)"
        if scope.nameFilter == "fabric" { out += " (--fabric: only *-keystore, *-msp, *-tls and *-crypto Secrets)" }
        out += "\n"
        out += "Provider \"\(provider)\"; the plugin's current key_id is \(plugin.keyID)"
        if plugin.healthz != "ok" { out += " (plugin health: \(plugin.healthz))" }
        out += "\n\n"

        // The worst finding first: private keys stored in plaintext. Names of data keys only, never content.
        let exposed = secrets.filter { $0.state == .plaintextPrivateKey }
        if !exposed.isEmpty {
            out += "Exposed: private keys stored in plaintext (\(exposed.count)):\n"
            var rows = [["NAMESPACE", "NAME", "RESOURCE", "DATA KEYS"]]
            for secret in exposed.prefix(listLimit) {
                rows.append([secret.namespace, secret.name, secret.resource, Table.truncate(secret.detail, 80)])
            }
            out += Table.render(rows, rightAligned: [])
            if exposed.count > listLimit { out += "... and \(exposed.count - listLimit) more (--format json lists every one)\n" }
            out += "\n"
        }

        let counts = countsByState
        var stateRows = [["STATE", "SECRETS"]]
        for state in SecretState.reportOrder { stateRows.append([state.rawValue, "\(counts[state] ?? 0)"]) }
        stateRows.append(["total", "\(total)"])
        out += Table.render(stateRows, rightAligned: [1])

        if !keys.isEmpty {
            out += "\n"
            var keyRows = [["KEY ID", "PLUGIN", "SECRETS", "DEKS"]]
            for key in keys {
                let status: String
                switch key.status {
                case .current: status = "current"
                case .held: status = "held (stale)"
                case .notHeld(let reason): status = "not held: \(Table.truncate(reason, 60))"
                }
                keyRows.append([Table.truncate(key.keyID, 48), status, "\(key.secrets)", "\(key.deks)"])
            }
            out += Table.render(keyRows, rightAligned: [2, 3])
        }

        let namespaces = countsByNamespace
        if !namespaces.isEmpty {
            out += "\n"
            let present = SecretState.reportOrder.filter { (counts[$0] ?? 0) > 0 }
            var rows = [["NAMESPACE", "TOTAL"] + present.map(\.rawValue)]
            for (namespace, byState) in namespaces {
                rows.append([namespace, "\(byState.values.reduce(0, +))"] + present.map { "\(byState[$0] ?? 0)" })
            }
            out += Table.render(rows, rightAligned: Set(1..<(present.count + 2)))
        }

        let notCurrent = exposed + secrets.filter { $0.state != .current && $0.state != .plaintextPrivateKey }
        if !notCurrent.isEmpty {
            out += "\nNot current (\(notCurrent.count)):\n"
            let several = scope.resources.count > 1
            var rows = [["NAMESPACE", "NAME"] + (several ? ["RESOURCE"] : []) + ["STATE", "PROVIDER", "KEY ID", "DETAIL"]]
            for secret in notCurrent.prefix(listLimit) {
                rows.append([secret.namespace, secret.name] + (several ? [secret.resource] : [])
                            + [secret.state.rawValue, secret.provider, Table.truncate(secret.keyID, 48), Table.truncate(secret.detail, 60)])
            }
            out += Table.render(rows, rightAligned: [])
            if notCurrent.count > listLimit {
                out += "... and \(notCurrent.count - listLimit) more (--format json lists every Secret)\n"
            }
        }

        if let verification {
            out += "\nVerify: \(verification.checked) distinct DEKs sent to the plugin's Decrypt; "
            if verification.failures.isEmpty {
                out += "every one was unwrapped.\n"
            } else {
                out += "\(verification.failures.count) cannot be unwrapped (\(verification.failedSecrets) Secrets):\n"
                for failure in verification.failures {
                    let shown = failure.secrets.prefix(5).joined(separator: ", ")
                    let more = failure.secrets.count > 5 ? ", ... (\(failure.secrets.count) in all)" : ""
                    out += "  key_id \(Table.truncate(failure.keyID, 48)): \(failure.message)\n    \(shown)\(more)\n"
                }
            }
        }

        out += "\n" + (allCurrent ? "OK: every Secret is current.\n" : "NOT OK: some Secrets are not current.\n")
        return out
    }
}

enum Table {
    static func render(_ rows: [[String]], rightAligned: Set<Int>) -> String {
        guard let columns = rows.map(\.count).max() else { return "" }
        var widths = Array(repeating: 0, count: columns)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        var out = ""
        for row in rows {
            var line = ""
            for (i, cell) in row.enumerated() {
                let pad = String(repeating: " ", count: widths[i] - cell.count)
                if i > 0 { line += "  " }
                line += rightAligned.contains(i) ? pad + cell : cell + pad
            }
            while line.hasSuffix(" ") { line.removeLast() }
            out += line + "\n"
        }
        return out
    }

    static func truncate(_ text: String, _ limit: Int) -> String {
        text.count <= limit ? text : String(text.prefix(limit - 1)) + "…"
    }
}

import EtcdProto
import Foundation

extension EtcdClient {
    /// etcd's default `--max-txn-ops`.
    public static let maxTxnOps = 128

    /// Puts many keys with few round trips: one KV.Txn of up to `maxTxnOps` puts (and under 1 MiB) per call, each
    /// atomic. For tests and benchmarks that load Secrets; the audit itself never writes.
    public func putAll(_ pairs: [(key: [UInt8], value: [UInt8])]) throws(AuditError) {
        var batch: [UInt8] = []
        var ops = 0
        for pair in pairs {
            var put = Etcdserverpb_PutRequest()
            put.key = Data(pair.key)
            put.value = Data(pair.value)
            let putBytes: [UInt8]
            do { putBytes = try put.serializedBytes() } catch { throw AuditError(.etcdFailed, "cannot encode a PutRequest") }
            // RequestOp { request_put = 2 }, appended to TxnRequest { success = 2 }.
            var op: [UInt8] = [0x12]
            Self.appendVarint(putBytes.count, to: &op)
            op += putBytes
            if ops == Self.maxTxnOps || (ops > 0 && batch.count + op.count > 1 << 20) {
                try commit(batch)
                batch.removeAll(keepingCapacity: true)
                ops = 0
            }
            batch.append(0x12)
            Self.appendVarint(op.count, to: &batch)
            batch += op
            ops += 1
        }
        if ops > 0 { try commit(batch) }
    }

    private func commit(_ txn: [UInt8]) throws(AuditError) {
        _ = try send(EtcdMethod.txn, txn, authenticated: true)
    }

    static func appendVarint(_ value: Int, to bytes: inout [UInt8]) {
        var v = UInt64(value)
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7f) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }
}

extension EtcdMethod {
    /// `/etcdserverpb.KV/Txn` (its messages are encoded by hand: only puts are needed).
    public static let txn = "/etcdserverpb.KV/Txn"
}

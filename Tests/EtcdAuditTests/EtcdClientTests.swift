import EtcdProto
import Foundation
import Testing
import TestSupport
@testable import EtcdAudit

/// The etcd client against a real etcd (Debian's etcd-server) on loopback.
@Suite(.serialized) struct EtcdClientTests {
    static let anyKey = Etcdserverpb_RangeRequest.with { $0.key = Data("/".utf8) }

    func keys(_ client: EtcdClient, prefix: String, pageSize: Int, onFirstPage: () throws -> Void = {}) throws -> (keys: [String], pages: Int, revisions: Set<Int64>) {
        var keys: [String] = []
        var pages = 0
        var revisions = Set<Int64>()
        try client.scan(prefix: Array(prefix.utf8), pageSize: pageSize) { page in
            pages += 1
            revisions.insert(page.revision)
            if pages == 1 { try? onFirstPage() }
            keys += page.kvs.map { String(decoding: $0.key, as: UTF8.self) }
        }
        return (keys, pages, revisions)
    }

    @Test func pagesAtOneRevisionAndStaysInsideThePrefix() throws {
        let etcd = try EtcdFixture()
        let client = try EtcdClient(configuration: EtcdClientConfiguration(endpoints: [etcd.endpoint]))
        var expected: [String] = []
        for i in 0..<2_345 {
            let key = "/registry/secrets/ns\(i % 7)/s\(String(format: "%05d", i))"
            expected.append(key)
            try client.put(key: Array(key.utf8), value: [UInt8(i & 0xff)])
        }
        for outside in ["/registry/secrets", "/registry/secretsx/ns/a", "/registry/configmaps/ns/a", "/other/secrets/ns/a",
                        "/registry/secrets0"] {
            try client.put(key: Array(outside.utf8), value: [1])
        }
        let scanned = try keys(client, prefix: "/registry/secrets/", pageSize: 1000) {
            // Written after the first page: a pinned scan must not see it, nor miss the deleted key.
            try client.put(key: Array("/registry/secrets/ns0/zzz-late".utf8), value: [2])
            try client.deletePrefix(Array(expected.last!.utf8))
        }
        #expect(scanned.pages == 3)
        #expect(scanned.revisions.count == 1)
        #expect(scanned.keys == expected.sorted())

        let small = try keys(client, prefix: "/registry/secrets/ns3/", pageSize: 50)
        #expect(small.keys.count == expected.filter { $0.hasPrefix("/registry/secrets/ns3/") }.count)
        #expect(small.keys.allSatisfy { $0.hasPrefix("/registry/secrets/ns3/") })
        #expect(small.pages == (small.keys.count + 49) / 50)
    }

    /// Many keys and small pages: the range is cut into windows; odd key bytes must not fall between them.
    @Test func windowedScanCoversEveryKeyOnce() throws {
        let etcd = try EtcdFixture()
        let client = try EtcdClient(configuration: EtcdClientConfiguration(endpoints: [etcd.endpoint]))
        var expected: [[UInt8]] = []
        for i in 0..<1_500 {
            expected.append(Array("/registry/secrets/org\(i % 13)/peer\(i)".utf8))
            expected.append(Array("/registry/secrets/n\(i % 3)/\(i)".utf8))
        }
        let prefix = Array("/registry/secrets/".utf8)
        expected += [prefix, prefix + [0], prefix + [0xff], prefix + [0xff, 0xff, 0x00], prefix + [0x7f, 0x80],
                     prefix + Array("UPPER/x".utf8), prefix + [0x2e, 0x2f]]
        expected += (0..<300).map { prefix + Array("same/\(String(repeating: "x", count: 40))\($0)".utf8) }
        try client.putAll(expected.map { (key: $0, value: [1]) })
        try client.put(key: Array("/registry/secrett".utf8), value: [1])
        try client.put(key: Array("/registry/secrets".utf8), value: [1])

        var seen: [[UInt8]] = []
        var pages = 0
        try client.scan(prefix: prefix, pageSize: 7) { page in
            pages += 1
            #expect(page.total == Int64(expected.count))
            #expect(page.kvs.count <= 7)
            seen += page.kvs.map { Array($0.key) }
        }
        #expect(seen.count == expected.count)
        #expect(seen == expected.sorted { $0.lexicographicallyPrecedes($1) })
        #expect(pages >= expected.count / 7)

        // The windows partition the prefix range and stay near the target size.
        let root = KeyBucket(prefix: prefix, low: 0, high: 256)
        let (total, revision) = try client.count(root.start, root.end, revision: 0)
        let windows = try client.plan(root, count: total, revision: revision, target: 100)
        #expect(windows.reduce(0) { $0 + $1.count } == total)
        for (a, b) in zip(windows, windows.dropFirst()) { #expect(!b.start.lexicographicallyPrecedes(a.end)) }
        #expect(windows.filter { $0.count > 100 }.allSatisfy { $0.start.starts(with: Array("/registry/secrets/same/".utf8)) })
    }

    @Test func bucketsPartitionTheirRange() {
        func checkPartition(_ parent: KeyBucket, _ children: [KeyBucket]) {
            #expect(children.first?.start == parent.start || children.first.map { $0.prefix.count > parent.prefix.count } == true)
            for (a, b) in zip(children, children.dropFirst()) { #expect(a.end == b.start) }
        }
        let root = KeyBucket(prefix: [0x61], low: 0, high: 256)
        #expect(root.start == [0x61] && root.end == [0x62])
        let children = root.children()
        #expect(children.count == KeyBucket.nameBytes.count + 3)
        #expect(children.first?.start == [0x61] && children.last?.end == [0x62])
        checkPartition(root, children)
        #expect(children.contains(KeyBucket(prefix: [0x61], low: 0x2f, high: 0x30)))
        let gap = KeyBucket(prefix: [0x61], low: 0x3a, high: 0x61)
        #expect(gap.children().count == 13)
        #expect(gap.children().first?.start == gap.start && gap.children().last?.end == gap.end)
        checkPartition(gap, gap.children())
        let single = KeyBucket(prefix: [0x61], low: 0x62, high: 0x63)
        #expect(single.children().first?.start == [0x61, 0x62])
        #expect(single.children().last?.end == [0x61, 0x63])
        let top = KeyBucket(prefix: [0xff], low: 0, high: 256)
        #expect(top.end == [0])
    }

    @Test func emptyRange() throws {
        let etcd = try EtcdFixture()
        let client = try EtcdClient(configuration: EtcdClientConfiguration(endpoints: [etcd.endpoint]))
        let scanned = try keys(client, prefix: "/registry/secrets/", pageSize: 10)
        #expect(scanned.keys.isEmpty && scanned.pages == 1)
    }

    @Test func compactionDuringAScanFails() throws {
        let etcd = try EtcdFixture()
        let client = try EtcdClient(configuration: EtcdClientConfiguration(endpoints: [etcd.endpoint]))
        for i in 0..<30 { try client.put(key: Array("/registry/secrets/a/\(i)".utf8), value: [1]) }
        let error = #expect(throws: AuditError.self) {
            _ = try keys(client, prefix: "/registry/secrets/", pageSize: 10) {
                try client.put(key: Array("/registry/secrets/a/0".utf8), value: [2])
                let revision = try client.range(Self.anyKey).header.revision
                let compacted = try etcd.etcdctl(["compact", "\(revision)"])
                #expect(compacted.status == 0, "\(compacted.stderr)")
            }
        }
        #expect(error?.code == .etcdFailed)
        #expect(error?.status?.code == .outOfRange)
        #expect(error?.message.contains("compacted") == true, "\(error?.message ?? "")")
    }

    @Test func unreachableEndpointsAndFailover() throws {
        let dead = "http://127.0.0.1:\(try FreePort.find())"
        let lonely = try EtcdClient(configuration: EtcdClientConfiguration(endpoints: [dead]))
        let error = #expect(throws: AuditError.self) { try lonely.range(Self.anyKey) }
        #expect(error?.code == .etcdUnavailable)
        #expect(error?.message.contains(dead) == true)

        let etcd = try EtcdFixture()
        let client = try EtcdClient(configuration: EtcdClientConfiguration(endpoints: [dead, etcd.endpoint]))
        try client.put(key: Array("/k".utf8), value: [1])
        #expect(try client.range(Etcdserverpb_RangeRequest.with { $0.key = Data("/k".utf8) }).kvs.count == 1)
    }

    @Test func badEndpointsAreConfigurationErrors() {
        for endpoint in ["ftp://x:1", "http://:2379", "http://h:99999", "http://[::1"] {
            let error = #expect(throws: AuditError.self) { try EtcdClient(configuration: EtcdClientConfiguration(endpoints: [endpoint])) }
            #expect(error?.code == .configuration, "\(endpoint)")
        }
        #expect(throws: AuditError.self) { try EtcdClient(configuration: EtcdClientConfiguration(endpoints: [])) }
    }

    @Test func mutualTLS() throws {
        let etcd = try EtcdFixture(tls: true)
        let certs = try #require(etcd.certificates)
        let good = try EtcdClientConfiguration(endpoints: [etcd.endpoint], caCertificateFile: certs.caFile,
                                               certificateFile: certs.clientCertFile, privateKeyFile: certs.clientKeyFile,
                                               user: nil, password: nil)
        let client = try EtcdClient(configuration: good)
        try client.put(key: Array("/registry/secrets/a/b".utf8), value: [1])
        #expect(try keys(client, prefix: "/registry/secrets/", pageSize: 10).keys == ["/registry/secrets/a/b"])

        // Without a scheme, certificates mean TLS.
        var schemeless = good
        schemeless.endpoints = [etcd.endpoint.replacingOccurrences(of: "https://", with: "")]
        #expect(try EtcdClient(configuration: schemeless).range(Self.anyKey).header.revision > 0)

        let refused: [(String, EtcdClientConfiguration)] = [
            ("no client certificate", EtcdClientConfiguration(endpoints: [etcd.endpoint], caCertificatePEM: certs.pem(certs.caFile))),
            ("client certificate from another CA", EtcdClientConfiguration(
                endpoints: [etcd.endpoint], caCertificatePEM: certs.pem(certs.caFile),
                certificatePEM: certs.pem(certs.foreignClientCertFile), privateKeyPEM: certs.pem(certs.foreignClientKeyFile))),
            ("server certificate not trusted", EtcdClientConfiguration(
                endpoints: [etcd.endpoint], caCertificatePEM: certs.pem(certs.foreignCAFile),
                certificatePEM: certs.pem(certs.clientCertFile), privateKeyPEM: certs.pem(certs.clientKeyFile))),
            ("plaintext to a TLS port", EtcdClientConfiguration(endpoints: [etcd.endpoint.replacingOccurrences(of: "https", with: "http")])),
        ]
        for (label, configuration) in refused {
            let error = #expect(throws: AuditError.self, "\(label)") {
                try EtcdClient(configuration: configuration).range(Self.anyKey)
            }
            #expect(error?.code == .etcdUnavailable || error?.code == .etcdFailed, "\(label): \(String(describing: error))")
        }
    }

    @Test func unreadableCertificateFiles() {
        let error = #expect(throws: AuditError.self) {
            try EtcdClientConfiguration(endpoints: ["https://127.0.0.1:1"], caCertificateFile: "/nonexistent/ca.crt",
                                        certificateFile: nil, privateKeyFile: nil, user: nil, password: nil)
        }
        #expect(error?.code == .configuration)
        #expect(error?.message.contains("--cacert /nonexistent/ca.crt") == true)
    }

    /// Over TLS (server certificate only): credentials are never sent over http.
    @Test func passwordAuthentication() throws {
        let etcd = try EtcdFixture(tls: true, clientCertAuth: false)
        let ca = try #require(etcd.certificates).pem(etcd.certificates!.caFile)
        try etcd.enableAuth(rootPassword: "s3cret")
        let overHTTP = #expect(throws: AuditError.self) {
            try EtcdClient(configuration: EtcdClientConfiguration(endpoints: ["http://127.0.0.1:2379"], user: "root", password: "s3cret"))
        }
        #expect(overHTTP?.code == .configuration && overHTTP?.message.contains("would travel unencrypted") == true)
        var configuration = EtcdClientConfiguration(endpoints: [etcd.endpoint], caCertificatePEM: ca, user: "root", password: "s3cret")
        let client = try EtcdClient(configuration: configuration)
        try client.put(key: Array("/registry/secrets/a/b".utf8), value: [1])
        #expect(try keys(client, prefix: "/registry/secrets/", pageSize: 10).keys == ["/registry/secrets/a/b"])

        configuration.password = "wrong"
        let wrong = #expect(throws: AuditError.self) { try EtcdClient(configuration: configuration).range(Self.anyKey) }
        #expect(wrong?.code == .etcdFailed)
        #expect(wrong?.message.contains("authentication") == true, "\(wrong?.message ?? "")")

        let anonymous = #expect(throws: AuditError.self) {
            try EtcdClient(configuration: EtcdClientConfiguration(endpoints: [etcd.endpoint], caCertificatePEM: ca)).range(Self.anyKey)
        }
        #expect(anonymous?.code == .etcdFailed)
    }
}

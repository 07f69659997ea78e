import EtcdProto
import KMSProto
import Testing

@Suite struct MethodPaths {
    @Test func kmsV2() {
        #expect(KMSv2Method.status == "/v2.KeyManagementService/Status")
        #expect(KMSv2Method.decrypt == "/v2.KeyManagementService/Decrypt")
        #expect(KMSv2Method.encrypt == "/v2.KeyManagementService/Encrypt")
        #expect(KMSv2Method.all.allSatisfy { $0.hasPrefix("/" + KMSv2Method.service + "/") })
    }

    @Test func kmsV1() {
        #expect(KMSv1Method.version == "/v1beta1.KeyManagementService/Version")
        #expect(KMSv1Method.decrypt == "/v1beta1.KeyManagementService/Decrypt")
        #expect(KMSv1Method.encrypt == "/v1beta1.KeyManagementService/Encrypt")
        #expect(KMSv1Method.all.allSatisfy { $0.hasPrefix("/" + KMSv1Method.service + "/") })
    }

    @Test func etcd() {
        #expect(EtcdMethod.range == "/etcdserverpb.KV/Range")
        #expect(EtcdMethod.put == "/etcdserverpb.KV/Put")
        #expect(EtcdMethod.deleteRange == "/etcdserverpb.KV/DeleteRange")
        #expect(EtcdMethod.authenticate == "/etcdserverpb.Auth/Authenticate")
        #expect(Set(EtcdMethod.all).count == 4)
    }
}

import EtcdProto
import Foundation
import SwiftProtobuf
import Testing

@Suite struct EtcdWire {
    @Test func rangeRequestBytes() throws {
        var request = Etcdserverpb_RangeRequest()
        request.key = Data("/registry/secrets/".utf8)
        request.rangeEnd = Data("/registry/secrets0".utf8)
        request.limit = 500
        request.sortOrder = .ascend
        request.sortTarget = .key
        request.serializable = true
        // key = 1, range_end = 2, limit = 3 (500 = varint f4 03),
        // sort_order = 5 (ASCEND = 1), sort_target KEY = 0 is omitted,
        // serializable = 7.
        let expected = bytes("0a 12") + ascii("/registry/secrets/")
            + bytes("12 12") + ascii("/registry/secrets0")
            + bytes("18 f403  28 01  38 01")
        #expect(hex(try request.serializedBytes()) == hex(expected))
    }

    @Test func rangeRequestRoundTripsEveryField() throws {
        var request = Etcdserverpb_RangeRequest()
        request.key = Data([0x00, 0xff])
        request.rangeEnd = Data([0x00])
        request.limit = 1
        request.revision = 2
        request.sortOrder = .descend
        request.sortTarget = .value
        request.serializable = true
        request.keysOnly = true
        request.countOnly = true
        request.minModRevision = 10
        request.maxModRevision = 11
        request.minCreateRevision = 12
        request.maxCreateRevision = 13

        let encoded: [UInt8] = try request.serializedBytes()
        let decoded = try Etcdserverpb_RangeRequest(serializedBytes: encoded)
        #expect(decoded == request)
        // The last three fields, numbers 11..13, have tags 0x58, 0x60, 0x68.
        #expect(hex(Array(encoded.suffix(6))) == "580b" + "600c" + "680d")
    }

    @Test func rangeResponseFromEtcdBytes() throws {
        let keyValue = bytes("0a 01 6b  10 02  18 03  20 01  2a 01 76")
        let wire = bytes("0a 02 18 2a") // header { revision = 42 }
            + bytes("12 0c") + keyValue  // kvs (12 bytes)
            + bytes("18 01")             // more
            + bytes("20 01")             // count
        let response = try Etcdserverpb_RangeResponse(serializedBytes: wire)
        #expect(response.header.revision == 42)
        #expect(response.more)
        #expect(response.count == 1)
        #expect(response.kvs.count == 1)
        let kv = try #require(response.kvs.first)
        #expect(kv.key == Data("k".utf8))
        #expect(kv.createRevision == 2)
        #expect(kv.modRevision == 3)
        #expect(kv.version == 1)
        #expect(kv.value == Data("v".utf8))
        #expect(kv.lease == 0)
    }

    @Test func responseHeaderFields() throws {
        var header = Etcdserverpb_ResponseHeader()
        header.clusterID = 1
        header.memberID = 2
        header.revision = 3
        header.raftTerm = 4
        #expect(hex(try header.serializedBytes()) == "0801" + "1002" + "1803" + "2004")
    }

    @Test func putAndDeleteRange() throws {
        var put = Etcdserverpb_PutRequest()
        put.key = Data("k".utf8)
        put.value = Data("v".utf8)
        put.lease = 7
        put.prevKv = true
        put.ignoreValue = true
        put.ignoreLease = true
        #expect(hex(try put.serializedBytes()) == "0a016b" + "120176" + "1807" + "2001" + "2801" + "3001")

        var delete = Etcdserverpb_DeleteRangeRequest()
        delete.key = Data("k".utf8)
        delete.rangeEnd = Data("l".utf8)
        delete.prevKv = true
        #expect(hex(try delete.serializedBytes()) == "0a016b" + "12016c" + "1801")

        let deleted = try Etcdserverpb_DeleteRangeResponse(
            serializedBytes: bytes("0a 02 18 05  10 01  1a 03 0a 01 6b"))
        #expect(deleted.header.revision == 5)
        #expect(deleted.deleted == 1)
        #expect(deleted.prevKvs.map(\.key) == [Data("k".utf8)])

        let putResponse = try Etcdserverpb_PutResponse(
            serializedBytes: bytes("0a 02 18 06  12 03 0a 01 6b"))
        #expect(putResponse.header.revision == 6)
        #expect(putResponse.hasPrevKv)
        #expect(putResponse.prevKv.key == Data("k".utf8))
    }

    @Test func authenticate() throws {
        var request = Etcdserverpb_AuthenticateRequest()
        request.name = "root"
        request.password = "pw"
        #expect(hex(try request.serializedBytes()) == "0a04" + hex(ascii("root")) + "1202" + hex(ascii("pw")))

        let response = try Etcdserverpb_AuthenticateResponse(
            serializedBytes: bytes("0a 02 18 01  12 03") + ascii("tok"))
        #expect(response.token == "tok")
        #expect(response.header.revision == 1)
    }
}

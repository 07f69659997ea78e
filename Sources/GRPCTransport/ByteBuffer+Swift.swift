import CGRPC

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Conversions between gRPC core slices / byte buffers and Swift values. The C macros
// GRPC_SLICE_START_PTR / GRPC_SLICE_LENGTH are not importable, so they are re-implemented here.

extension grpc_slice {
    /// Calls `body` with the bytes of the slice. The pointer is only valid inside `body`.
    @inline(__always)
    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        if refcount != nil {
            return try body(UnsafeRawBufferPointer(start: data.refcounted.bytes, count: data.refcounted.length))
        }
        var inlined = data.inlined
        let length = Int(inlined.length)
        return try Swift.withUnsafeBytes(of: &inlined.bytes) { raw in
            try body(UnsafeRawBufferPointer(rebasing: raw[..<length]))
        }
    }

    var count: Int {
        refcount != nil ? data.refcounted.length : Int(data.inlined.length)
    }

    /// Decodes the slice as UTF-8 (invalid sequences are repaired). Slices carry no NUL terminator.
    var string: String {
        withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
    }

    /// A new slice holding a copy of `bytes`; the caller owns one reference (`grpc_slice_unref`).
    static func copying(_ bytes: UnsafeRawBufferPointer) -> grpc_slice {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return grpc_empty_slice() }
        return grpc_slice_from_copied_buffer(base.assumingMemoryBound(to: CChar.self), bytes.count)
    }

    /// A new slice holding the UTF-8 bytes of `string`; the caller owns one reference.
    static func copying(_ string: String) -> grpc_slice {
        var string = string
        return string.withUTF8 { copying(UnsafeRawBufferPointer($0)) }
    }
}

enum ByteBuffers {
    /// Creates a raw byte buffer holding a copy of `bytes`. The caller destroys it with
    /// `grpc_byte_buffer_destroy` (also after it was handed to a GRPC_OP_SEND_MESSAGE).
    static func make(_ bytes: [UInt8]) -> UnsafeMutablePointer<grpc_byte_buffer> {
        if bytes.isEmpty {
            return grpc_raw_byte_buffer_create(nil, 0)
        }
        var slice = bytes.withUnsafeBytes { grpc_slice.copying($0) }
        // grpc_raw_byte_buffer_create takes its own reference on each slice.
        let buffer = grpc_raw_byte_buffer_create(&slice, 1)!
        grpc_slice_unref(slice)
        return buffer
    }

    /// Copies the payload of `buffer` into an array. Uncompressed raw buffers are read directly from
    /// their slices (one copy); anything else goes through `grpc_byte_buffer_reader`, which also
    /// decompresses. Returns nil if the payload cannot be decoded. Does not destroy `buffer`.
    static func copy(_ buffer: UnsafeMutablePointer<grpc_byte_buffer>) -> [UInt8]? {
        if buffer.pointee.type == GRPC_BB_RAW, buffer.pointee.data.raw.compression == GRPC_COMPRESS_NONE {
            let sliceBuffer = buffer.pointee.data.raw.slice_buffer
            if sliceBuffer.count == 1, let slices = sliceBuffer.slices {
                return slices.pointee.withUnsafeBytes { Array($0.bindMemory(to: UInt8.self)) }
            }
            return gather(sliceBuffer.slices, count: sliceBuffer.count, totalLength: sliceBuffer.length)
        }
        var reader = grpc_byte_buffer_reader()
        guard grpc_byte_buffer_reader_init(&reader, buffer) != 0 else { return nil }
        defer { grpc_byte_buffer_reader_destroy(&reader) }
        var result: [UInt8] = []
        result.reserveCapacity(grpc_byte_buffer_length(buffer))
        var slice = grpc_slice()
        while grpc_byte_buffer_reader_next(&reader, &slice) != 0 {
            slice.withUnsafeBytes { result.append(contentsOf: $0.bindMemory(to: UInt8.self)) }
            grpc_slice_unref(slice)
        }
        return result
    }

    private static func gather(_ slices: UnsafeMutablePointer<grpc_slice>?, count: Int, totalLength: Int) -> [UInt8] {
        guard let slices, totalLength > 0 else { return [] }
        return [UInt8](unsafeUninitializedCapacity: totalLength) { storage, initialized in
            var offset = 0
            for index in 0..<count {
                slices[index].withUnsafeBytes { bytes in
                    let room = min(bytes.count, totalLength - offset)
                    if room > 0, let source = bytes.baseAddress {
                        memcpy(storage.baseAddress! + offset, source, room)
                        offset += room
                    }
                }
            }
            initialized = offset
        }
    }
}

extension grpc_metadata_array {
    /// Copies the key/value pairs out (the slices are owned by the call and die with it).
    func copyPairs() -> [(key: String, value: String)] {
        guard count > 0, let metadata else { return [] }
        var pairs: [(key: String, value: String)] = []
        pairs.reserveCapacity(count)
        for index in 0..<count {
            pairs.append((key: metadata[index].key.string, value: metadata[index].value.string))
        }
        return pairs
    }
}

/// Builds a temporary `grpc_channel_args` for channel / server creation (the core copies the
/// arguments, so they only need to live for the duration of `body`).
struct ChannelArguments {
    private var integers: [(String, Int32)] = []
    private var strings: [(String, String)] = []

    mutating func set(_ key: String, _ value: Int32) { integers.append((key, value)) }
    mutating func set(_ key: String, _ value: String) { strings.append((key, value)) }

    func withUnsafeArguments<R>(_ body: (UnsafePointer<grpc_channel_args>) throws -> R) rethrows -> R {
        var owned: [UnsafeMutablePointer<CChar>] = []
        defer { owned.forEach { free($0) } }
        func duplicate(_ text: String) -> UnsafeMutablePointer<CChar> {
            let copy = strdup(text)!
            owned.append(copy)
            return copy
        }
        var arguments: [grpc_arg] = []
        for (key, value) in integers {
            var argument = grpc_arg()
            argument.type = GRPC_ARG_INTEGER
            argument.key = duplicate(key)
            argument.value.integer = value
            arguments.append(argument)
        }
        for (key, value) in strings {
            var argument = grpc_arg()
            argument.type = GRPC_ARG_STRING
            argument.key = duplicate(key)
            argument.value.string = duplicate(value)
            arguments.append(argument)
        }
        return try arguments.withUnsafeMutableBufferPointer { buffer in
            var channelArgs = grpc_channel_args(num_args: buffer.count, args: buffer.baseAddress)
            return try body(&channelArgs)
        }
    }
}

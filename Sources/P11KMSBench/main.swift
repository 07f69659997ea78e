// Drives a running p11kms plugin over its unix socket with N concurrent callers and, in the same run, measures the
// raw in-process rate of PKCS#11 AES-GCM wrap+unwrap pairs on the same token. Release builds only.
//
//   p11kms-bench --listen unix:///path.sock --token-label L --pin-file F [--module M] [--threads 16]
//                [--seconds 5] [--plugin-pid PID]
//
// scripts/bench.sh sets up a token, starts the plugin and runs this.

import CPKCS11
import Foundation
import GRPCTransport
import KMSProto
import KMSServer
import KeyService
import Logging
import Metrics
import PKCS11
import Prometheus

GRPCRuntime.blockSignalsBeforeInit()

var options: [String: String] = [:]
var index = 1
while index < CommandLine.arguments.count {
    let key = CommandLine.arguments[index]
    guard key.hasPrefix("--"), index + 1 < CommandLine.arguments.count else {
        FileHandle.standardError.write(Data("usage: p11kms-bench --listen unix:///path --token-label L --pin-file F [--module M] [--threads N] [--seconds S] [--plugin-pid PID]\n".utf8))
        exit(2)
    }
    options[String(key.dropFirst(2))] = CommandLine.arguments[index + 1]
    index += 2
}
let threads = Int(options["threads"] ?? "16") ?? 16
let seconds = Double(options["seconds"] ?? "5") ?? 5
let listen = options["listen"] ?? "unix:///tmp/p11kms.sock"
let socketPath = listen.hasPrefix("unix://") ? String(listen.dropFirst(7)) : String(listen.dropFirst(5))
let pluginPID = options["plugin-pid"].flatMap { Int32($0) }
let phases = Set((options["phases"] ?? "raw,envelope,status,encrypt,decrypt,roundtrip").split(separator: ",").map(String.init))

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("p11kms-bench: \(message)\n".utf8))
    exit(1)
}

// MARK: raw PKCS#11 pairs in this process, on the same token
guard let label = options["token-label"], let pinFile = options["pin-file"],
      let pinData = FileManager.default.contents(atPath: pinFile) else { fail("--token-label and --pin-file are required") }
let pin = Array(String(decoding: pinData, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).utf8)
let token = Token(configuration: TokenConfiguration(modulePath: options["module"] ?? "/usr/lib/softhsm/libsofthsm2.so",
                                                    tokenLabel: label, pin: pin, maxSessions: threads))
let ring = KeyRing(token: token)
do { try ring.refresh() } catch { fail("cannot open the token: \(error)") }
guard let current = ring.current else { fail("the token has no current key") }
let service = EnvelopeService(keyRing: ring)

/// `text` padded with spaces to `width` characters (Foundation's `%-34@` does not pad on Linux).
func pad(_ text: String, _ width: Int = 34, left: Bool = false) -> String {
    let fill = String(repeating: " ", count: max(0, width - text.count))
    return left ? fill + text : text + fill
}

/// `cpu`: the plugin's CPU per call (or this process's, for the in-process phases); `clientCPU`: this process's
/// CPU per call while it drove the plugin over the socket (the load client's share of the machine).
func report(_ run: Run, cpu: Double?, rss: Int?, clientCPU: Double? = nil) {
    let cpuText = cpu.map { String(format: "%8.1f", $0) } ?? "       -"
    let clientText = clientCPU.map { String(format: "%9.1f", $0) } ?? "        -"
    let rssText = rss.map { String(format: "%7.1f", Double($0) / 1024) } ?? "      -"
    print(String(format: "%@ %10.0f %9.0f %9.0f %@ %@ %@ %7d", pad(run.name) as NSString, run.rate, run.percentile(0.5),
                 run.percentile(0.99), cpuText, clientText, rssText, run.errors))
    fflush(nil)
}
print("threads=\(threads) seconds=\(seconds) key_id=\(current.keyID)")
print([pad("operation"), pad("ops/s", 10, left: true), pad("p50 µs", 9, left: true), pad("p99 µs", 9, left: true),
       pad("cpu µs", 8, left: true), pad("client µs", 9, left: true), pad("rss MiB", 7, left: true),
       pad("errors", 7, left: true)].joined(separator: " "))

let seed = SecureRandom.bytes(32)
let aad = Array("p11kms bench".utf8)
/// Raw AES-GCM encrypt+decrypt pairs with the token object, or with its session copy (the plugin's fast path).
func rawPairs(_ name: String, sessionCopy: Bool) -> Run {
    measure(name, threads: threads, seconds: seconds) { _ in
        let iv = SecureRandom.bytes(12)
        let opened = try? token.withKey(id: current.id.bytes, name: current.keyID, copy: sessionCopy, deadline: nil) {
            (session, handle) throws(PKCS11Error) -> [UInt8] in
            let sealed = try session.encryptAESGCM(key: handle, iv: iv, aad: aad, plaintext: seed)
            return try session.decryptAESGCM(key: handle, iv: iv, aad: aad, ciphertext: sealed)
        }
        return opened == seed
    }
}
var raw: Run?
if phases.contains("raw") {
    var cpu0 = selfCPU()
    let tokenRun = rawPairs("pkcs11 gcm pair, token object", sessionCopy: false)
    report(tokenRun, cpu: (selfCPU() - cpu0) / Double(max(1, tokenRun.operations)) * 1e6, rss: nil)
    cpu0 = selfCPU()
    let copyRun = rawPairs("pkcs11 gcm pair, session object", sessionCopy: true)
    report(copyRun, cpu: (selfCPU() - cpu0) / Double(max(1, copyRun.operations)) * 1e6, rss: nil)
    if token.sessionKeyCopies.status.active == 0 { print("note: the module refused the session copy; both rows used the token object") }
    print(String(format: "session object / token object raw pair rate: %.2fx", copyRun.rate / tokenRun.rate))
    raw = tokenRun
}

if phases.contains("envelope") {
    // --session-copies false: the in-process envelope pairs with the token objects only.
    token.sessionKeyCopies.setEnabled(options["session-copies"] != "false")
    let envelope = measure("envelope in-process enc+dec pair", threads: threads, seconds: seconds) { _ in
        guard let (ciphertext, key) = try? service.encrypt(seed),
              let opened = try? service.decrypt(ciphertext, expectedKeyID: key.keyID) else { return false }
        return opened.plaintext == seed
    }
    report(envelope, cpu: nil, rss: nil)
}

if phases.contains("handler") {
    // The KMS v2 handlers in this process (protobuf, validation, metrics into a Prometheus registry), no gRPC.
    MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: PrometheusCollectorRegistry()))
    var configuration = PluginConfiguration(listen: try! SocketAddress(listen: "unix:///nonexistent/bench.sock"))
    configuration.httpListen = nil
    let plugin = PluginServer(configuration: configuration, service: service, metrics: KMSMetrics(),
                              logger: Logger(label: "bench"), runtimeVersion: "bench")
    let encrypt: @Sendable ([UInt8], ServerCallContext) throws -> [UInt8] = { request, _ in try plugin.call(KMSv2Method.encrypt, request) }
    let decrypt: @Sendable ([UInt8], ServerCallContext) throws -> [UInt8] = { request, _ in try plugin.call(KMSv2Method.decrypt, request) }
    var request = V2_EncryptRequest()
    request.plaintext = Data(seed)
    let requestBytes: [UInt8] = (try? request.serializedBytes()) ?? []
    let context = ServerCallContext(method: KMSv2Method.encrypt, metadata: [], deadline: nil)
    let run = measure("kms v2 handlers in-process pair", threads: threads, seconds: seconds) { _ in
        guard let bytes = try? encrypt(requestBytes, context), let response = try? V2_EncryptResponse(serializedBytes: bytes) else { return false }
        var d = V2_DecryptRequest()
        d.ciphertext = response.ciphertext
        d.keyID = response.keyID
        guard let dBytes: [UInt8] = try? d.serializedBytes(), let out = try? decrypt(dBytes, context),
              let plain = try? V2_DecryptResponse(serializedBytes: out) else { return false }
        return Array(plain.plaintext) == seed
    }
    report(run, cpu: nil, rss: nil)
}

// MARK: over the socket
let client: GRPCClient
do { client = try GRPCClient(configuration: GRPCClientConfiguration(target: "unix:\(socketPath)")) } catch { fail("cannot connect: \(error)") }
let statusRequest = (try? V2_StatusRequest().serializedBytes()) ?? []
var encryptRequest = V2_EncryptRequest()
encryptRequest.plaintext = Data(seed)
encryptRequest.uid = "bench"
let encryptBytes: [UInt8] = (try? encryptRequest.serializedBytes()) ?? []
guard let sample = try? V2_EncryptResponse(serializedBytes: client.unary(method: KMSv2Method.encrypt, request: encryptBytes)) else {
    fail("Encrypt over the socket failed")
}
var decryptRequest = V2_DecryptRequest()
decryptRequest.ciphertext = sample.ciphertext
decryptRequest.keyID = sample.keyID
decryptRequest.uid = "bench"
let decryptBytes: [UInt8] = (try? decryptRequest.serializedBytes()) ?? []

@discardableResult
func overSocket(_ name: String, _ body: @escaping @Sendable (Int) -> Bool) -> Run? {
    guard phases.contains(name.split(separator: " ").dropFirst().first.map { $0.lowercased() }.map { $0.hasPrefix("encrypt+") ? "roundtrip" : $0 } ?? "") else { return nil }
    let before = pluginPID.flatMap(ProcessSample.read)
    let clientBefore = selfCPU()
    let run = measure(name, threads: threads, seconds: seconds, body)
    let clientAfter = selfCPU()
    let after = pluginPID.flatMap(ProcessSample.read)
    var cpu: Double?
    if let before, let after { cpu = (after.cpuSeconds - before.cpuSeconds) / Double(max(1, run.operations)) * 1e6 }
    report(run, cpu: cpu, rss: after?.rssKiB, clientCPU: (clientAfter - clientBefore) / Double(max(1, run.operations)) * 1e6)
    return run
}

overSocket("socket Status") { _ in (try? client.unary(method: KMSv2Method.status, request: statusRequest)) != nil }
overSocket("socket Encrypt") { _ in (try? client.unary(method: KMSv2Method.encrypt, request: encryptBytes)) != nil }
overSocket("socket Decrypt") { _ in (try? client.unary(method: KMSv2Method.decrypt, request: decryptBytes)) != nil }
let roundTrip = overSocket("socket Encrypt+Decrypt round trip") { _ in
    guard let bytes = try? client.unary(method: KMSv2Method.encrypt, request: encryptBytes),
          let response = try? V2_EncryptResponse(serializedBytes: bytes) else { return false }
    var request = V2_DecryptRequest()
    request.ciphertext = response.ciphertext
    request.keyID = response.keyID
    guard let requestBytes: [UInt8] = try? request.serializedBytes(),
          let opened = try? client.unary(method: KMSv2Method.decrypt, request: requestBytes),
          let plain = try? V2_DecryptResponse(serializedBytes: opened) else { return false }
    return Array(plain.plaintext) == seed
}

if let roundTrip, let raw {
    print(String(format: "round trips over the socket reach %.0f%% of the raw token-object pair rate", roundTrip.rate / raw.rate * 100))
}
if let pid = pluginPID, let sample = ProcessSample.read(pid: pid) {
    print(String(format: "plugin memory: rss %.1f MiB, peak %.1f MiB", Double(sample.rssKiB) / 1024, Double(sample.hwmKiB) / 1024))
}
client.close()

import Lifecycle
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The small HTTP listener for probes and scrapes (`/healthz`, `/livez`, `/readyz`, `/metrics`), on its own
/// address — loopback by default — separate from the KMS socket. GET and HEAD only; every answer closes nothing
/// and blocks on nothing (health comes from the cached probe result).
public final class HTTPEndpoint: Service {
    public struct Response: Sendable {
        public var status: Int
        public var contentType: String
        public var body: [UInt8]

        public init(status: Int, contentType: String = "text/plain; charset=utf-8", body: String) {
            self.status = status
            self.contentType = contentType
            self.body = Array(body.utf8)
        }

        public init(status: Int, contentType: String, body: [UInt8]) {
            self.status = status
            self.contentType = contentType
            self.body = body
        }
    }

    public typealias Route = @Sendable () -> Response

    public let host: String
    public let port: Int
    private let routes: [String: Route]
    private let state = Mutex<(group: MultiThreadedEventLoopGroup?, channel: (any Channel)?)>((nil, nil))
    private let boundPort = Mutex<Int?>(nil)
    public var name: String { "HTTP \(host):\(port)" }

    /// The bound port once started (useful with port 0).
    public var listeningPort: Int? { boundPort.withLock { $0 } }

    public init(host: String, port: Int, routes: [String: Route]) {
        self.host = host
        self.port = port
        self.routes = routes
    }

    /// Parses `HOST:PORT` (`[::1]:PORT` for IPv6).
    public static func parse(_ address: String) throws(ServeError) -> (host: String, port: Int) {
        let host: Substring
        let portText: Substring
        if address.hasPrefix("["), let close = address.firstIndex(of: "]") {
            host = address[address.index(after: address.startIndex)..<close]
            portText = address[address.index(after: close)...].drop(while: { $0 == ":" })
        } else if let colon = address.lastIndex(of: ":") {
            host = address[..<colon]
            portText = address[address.index(after: colon)...]
        } else {
            throw ServeError("--http-listen must be HOST:PORT, e.g. 127.0.0.1:8787, got \"\(address)\"")
        }
        guard !host.isEmpty, let port = Int(portText), (0...65535).contains(port) else {
            throw ServeError("--http-listen must be HOST:PORT, e.g. 127.0.0.1:8787, got \"\(address)\"")
        }
        return (String(host), port)
    }

    public func start() throws(ServiceError) {
        do throws(ServeError) {
            let port = try bind()
            boundPort.withLock { $0 = port }
        } catch {
            throw ServiceError(error.description)
        }
    }

    /// Binds and starts serving; returns the bound port (useful with port 0).
    @discardableResult
    public func bind() throws(ServeError) -> Int {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let routes = self.routes
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                    channel.pipeline.addHandler(RouteHandler(routes: routes))
                }
            }
        do {
            let channel = try bootstrap.bind(host: host, port: port).wait()
            state.withLock { $0 = (group, channel) }
            return channel.localAddress?.port ?? port
        } catch {
            try? group.syncShutdownGracefully()
            throw ServeError("cannot listen for HTTP on \(host):\(port): \(error)")
        }
    }

    /// Closes the listener and its event loop; answers are never slow, so this takes milliseconds.
    public func shutdown(deadline: ContinuousClock.Instant) -> Bool {
        let (group, channel) = state.withLock { s in
            let current = s
            s = (nil, nil)
            return current
        }
        try? channel?.close().wait()
        try? group?.syncShutdownGracefully()
        return true
    }
}

private final class RouteHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let routes: [String: HTTPEndpoint.Route]

    init(routes: [String: HTTPEndpoint.Route]) {
        self.routes = routes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        var response: HTTPEndpoint.Response
        if head.method != .GET && head.method != .HEAD {
            response = .init(status: 405, body: "method not allowed\n")
        } else if let route = routes[path] {
            response = route()
        } else {
            response = .init(status: 404, body: "not found\n")
        }
        if head.method == .HEAD { response.body = [] }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        headers.add(name: "Cache-Control", value: "no-store")
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let responseHead = HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        context.write(wrapOutboundOut(.head(responseHead)), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: response.body.count)
        buffer.writeBytes(response.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

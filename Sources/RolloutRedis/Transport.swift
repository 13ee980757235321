#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CRolloutCrypto

/// A point on the monotonic clock by which an I/O call must finish.
package typealias Deadline = ContinuousClock.Instant

/// A connected byte stream, blocking from its caller's point of view, bounded by deadlines.
/// Not thread-safe: one connection, one owner (see ``RedisConnection``), except
/// ``shutdown()``. Used for Redis and, by the controller, for Prometheus's HTTP API: messages
/// name the peer the stream was opened to.
package protocol ByteStream: AnyObject {
    func write(_ bytes: UnsafeRawBufferPointer, deadline: Deadline) throws(RedisError)
    /// Reads at least one byte; throws `.connectionClosed` at end of stream.
    func read(into buffer: UnsafeMutableRawBufferPointer, deadline: Deadline) throws(RedisError) -> Int
    /// Whether the socket has bytes or an end of stream while no reply is due: the server
    /// closed it (idle timeout, CLIENT KILL, restart) or the stream is out of step.
    var isReadableWhileIdle: Bool { get }
    /// Ends both directions of the socket without closing its descriptor, so a read or write
    /// blocked in another thread returns at once. The owner must serialize it with ``close()``.
    func shutdown()
    func close()
}

private func errnoText(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}

/// A non-blocking POSIX socket whose reads and writes wait with poll(2) until their deadline.
/// Sends use MSG_NOSIGNAL, so a closed peer is an error, never a SIGPIPE.
package final class SocketStream: ByteStream {
    private(set) var fd: Int32
    /// Who is at the other end, for messages: "Redis", "Prometheus".
    let peer: String

    private init(fd: Int32, peer: String) {
        self.fd = fd
        self.peer = peer
    }

    deinit { close() }

    static func connect(to endpoint: RedisURL.Endpoint, deadline: Deadline) throws(RedisError) -> SocketStream {
        switch endpoint {
        case .tcp(let host, let port):
            return try connectTCP(host: host, port: port, peer: "Redis", deadline: deadline)
        case .unix(let path):
            return try connectUnix(path: path, deadline: deadline)
        }
    }

    /// A TCP connection to `peer` (named in messages) at `host`:`port`, within `deadline`.
    package static func connectTCP(host: String, port: Int, peer: String, deadline: Deadline) throws(RedisError) -> SocketStream {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        hints.ai_flags = AI_ADDRCONFIG
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let first = list else {
            let why = String(cString: gai_strerror(status))
            throw RedisError(.connectFailed, "Cannot resolve \(peer) host '\(host)': \(why). Check the host in the \(peer) URL.")
        }
        defer { freeaddrinfo(list) }

        var lastError = RedisError(.connectFailed, "Cannot connect to \(peer) at \(host):\(port).")
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let info = candidate {
            candidate = info.pointee.ai_next
            do {
                let stream = try connect(
                    family: info.pointee.ai_family, address: info.pointee.ai_addr, length: info.pointee.ai_addrlen,
                    label: "\(host):\(port)", peer: peer, deadline: deadline)
                var one: Int32 = 1
                setsockopt(stream.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                return stream
            } catch {
                lastError = error
                if error.code == .timeout { break }
            }
        }
        throw lastError
    }

    private static func connectUnix(path: String, deadline: Deadline) throws(RedisError) -> SocketStream {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        let bytes = Array(path.utf8)
        guard bytes.count < capacity else {
            throw RedisError(.invalidURL, "The Unix socket path is longer than \(capacity - 1) bytes: \(path).")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return try withUnsafePointer(to: &address) { pointer throws(RedisError) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic throws(RedisError) in
                try connect(
                    family: AF_UNIX, address: generic, length: socklen_t(MemoryLayout<sockaddr_un>.size),
                    label: path, peer: "Redis", deadline: deadline)
            }
        }
    }

    private static func connect(
        family: Int32, address: UnsafePointer<sockaddr>?, length: socklen_t, label: String, peer: String, deadline: Deadline
    ) throws(RedisError) -> SocketStream {
        #if canImport(Glibc)
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        #else
        let type = SOCK_STREAM
        #endif
        let fd = socket(family, type, 0)
        guard fd >= 0 else { throw RedisError(.io, "socket() failed: \(errnoText()).") }
        let stream = SocketStream(fd: fd, peer: peer)
        #if !canImport(Glibc)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        #endif
        if Glibc.connect(fd, address, length) != 0 {
            let code = errno
            guard code == EINPROGRESS || code == EAGAIN || code == EINTR else {
                throw connectError(code, label: label, peer: peer)
            }
            try stream.wait(for: Int16(POLLOUT), deadline: deadline, what: "connecting to \(peer) at \(label)")
            var soError: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &size)
            if soError != 0 { throw connectError(soError, label: label, peer: peer) }
        }
        return stream
    }

    private static func connectError(_ code: Int32, label: String, peer: String) -> RedisError {
        if code == ECONNREFUSED || code == ENOENT {
            let hint = peer == "Redis" ? "Is redis-server running, and is the URL right?" : "Is it running, and is the URL right?"
            return RedisError(.connectionRefused, "Connection refused by \(label): no \(peer) server listens there. \(hint)")
        }
        return RedisError(.connectFailed, "Cannot connect to \(peer) at \(label): \(errnoText(code)).")
    }

    /// Waits until the socket is ready for `events` or the deadline passes.
    func wait(for events: Int16, deadline: Deadline, what: String) throws(RedisError) {
        while true {
            let remaining = ContinuousClock.now.duration(to: deadline)
            let (seconds, attoseconds) = remaining.components
            let milliseconds = max(0, seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
            if remaining <= .zero {
                throw RedisError(.timeout, "Timed out \(what).")
            }
            var descriptor = pollfd(fd: fd, events: events, revents: 0)
            let ready = poll(&descriptor, 1, Int32(clamping: milliseconds))
            if ready > 0 { return }
            if ready < 0 && errno != EINTR { throw RedisError(.io, "poll() failed \(what): \(errnoText()).") }
        }
    }

    package func write(_ bytes: UnsafeRawBufferPointer, deadline: Deadline) throws(RedisError) {
        var offset = 0
        while offset < bytes.count {
            guard let base = bytes.baseAddress else { return }
            let sent = send(fd, base + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if sent > 0 {
                offset += sent
                continue
            }
            let code = errno
            if sent < 0 && (code == EAGAIN || code == EWOULDBLOCK) {
                try wait(for: Int16(POLLOUT), deadline: deadline, what: "sending to \(peer)")
            } else if sent < 0 && code == EINTR {
                continue
            } else if code == EPIPE || code == ECONNRESET {
                throw RedisError(.connectionClosed, "\(peer) closed the connection while a request was sent.")
            } else {
                throw RedisError(.io, "send() to \(peer) failed: \(errnoText(code)).")
            }
        }
    }

    package func read(into buffer: UnsafeMutableRawBufferPointer, deadline: Deadline) throws(RedisError) -> Int {
        while true {
            guard let base = buffer.baseAddress else { return 0 }
            let count = recv(fd, base, buffer.count, 0)
            if count > 0 { return count }
            if count == 0 {
                throw RedisError(.connectionClosed, "Server closed the connection.")
            }
            let code = errno
            switch code {
            case EAGAIN, EWOULDBLOCK:
                try wait(for: Int16(POLLIN), deadline: deadline, what: "waiting for \(peer) to answer")
            case EINTR:
                continue
            case ECONNRESET:
                throw RedisError(.connectionClosed, "Server reset the connection.")
            default:
                throw RedisError(.io, "recv() from \(peer) failed: \(errnoText(code)).")
            }
        }
    }

    package var isReadableWhileIdle: Bool {
        guard fd >= 0 else { return true }
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, 0) != 0
    }

    package func shutdown() {
        if fd >= 0 { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
    }

    package func close() {
        if fd >= 0 {
            _ = Glibc.close(fd)
            fd = -1
        }
    }
}

/// TLS over a ``SocketStream`` with OpenSSL. OpenSSL reads and writes memory BIOs and this
/// type moves the bytes with send/recv, so deadlines hold and no SIGPIPE can be raised.
package final class TLSStream: ByteStream {
    private let socket: SocketStream
    private let context: OpaquePointer
    private let ssl: OpaquePointer
    private let incoming: OpaquePointer
    private let outgoing: OpaquePointer
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * 1024, alignment: 16)

    package static func connect(socket: SocketStream, host: String, settings: RedisURL.TLS, deadline: Deadline) throws(RedisError)
        -> TLSStream
    {
        guard let context = SSL_CTX_new(TLS_client_method()) else {
            throw RedisError(.tls, "OpenSSL could not create a TLS context: \(TLSStream.openSSLErrors()).")
        }
        _ = CRolloutCrypto_SSL_CTX_set_min_proto_version(context, CRolloutCrypto_TLS1_2_VERSION())
        CRolloutCrypto_SSL_CTX_set_nonblocking_modes(context)
        if settings.insecure {
            SSL_CTX_set_verify(context, SSL_VERIFY_NONE, nil)
        } else {
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
            let loaded: Int32
            if let ca = settings.caCertificatePath {
                loaded = SSL_CTX_load_verify_locations(context, ca, nil)
            } else {
                loaded = SSL_CTX_set_default_verify_paths(context)
            }
            guard loaded == 1 else {
                SSL_CTX_free(context)
                throw RedisError(
                    .tls,
                    "Cannot load the CA certificate \(settings.caCertificatePath ?? "(system store)"): \(openSSLErrors()). Check cacert= in the Redis URL."
                )
            }
        }
        if let cert = settings.certificatePath, let key = settings.keyPath {
            guard SSL_CTX_use_certificate_chain_file(context, cert) == 1,
                SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) == 1
            else {
                SSL_CTX_free(context)
                throw RedisError(.tls, "Cannot load the client certificate \(cert) or key \(key): \(openSSLErrors()).")
            }
        }
        let ssl = SSL_new(context)
        let incoming = BIO_new(BIO_s_mem())
        let outgoing = BIO_new(BIO_s_mem())
        guard let ssl, let incoming, let outgoing else {
            // Free whatever was made: SSL_free, BIO_free and SSL_CTX_free accept what exists.
            if let ssl { SSL_free(ssl) }
            if let incoming { BIO_free(incoming) }
            if let outgoing { BIO_free(outgoing) }
            SSL_CTX_free(context)
            throw RedisError(.tls, "OpenSSL could not create a TLS session: \(openSSLErrors()).")
        }
        SSL_set_bio(ssl, incoming, outgoing)
        let stream = TLSStream(socket: socket, context: context, ssl: ssl, incoming: incoming, outgoing: outgoing)
        if !settings.insecure {
            if isIPAddress(host) {
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host)
            } else {
                _ = CRolloutCrypto_SSL_set_tlsext_host_name(ssl, host)
                SSL_set1_host(ssl, host)
            }
        } else if !isIPAddress(host) {
            _ = CRolloutCrypto_SSL_set_tlsext_host_name(ssl, host)
        }
        try stream.handshake(host: host, deadline: deadline)
        return stream
    }

    private init(socket: SocketStream, context: OpaquePointer, ssl: OpaquePointer, incoming: OpaquePointer, outgoing: OpaquePointer) {
        self.socket = socket
        self.context = context
        self.ssl = ssl
        self.incoming = incoming
        self.outgoing = outgoing
    }

    deinit {
        SSL_free(ssl)  // frees both BIOs too
        SSL_CTX_free(context)
        socket.close()
        scratch.deallocate()
    }

    private func handshake(host: String, deadline: Deadline) throws(RedisError) {
        while true {
            ERR_clear_error()
            let result = SSL_connect(ssl)
            try flushOutgoing(deadline: deadline)
            if result == 1 { return }
            let code = SSL_get_error(ssl, result)
            if code == SSL_ERROR_WANT_READ {
                try fillIncoming(deadline: deadline, what: "during the TLS handshake with \(host)")
                continue
            }
            let verify = SSL_get_verify_result(ssl)
            if verify != X509_V_OK {
                let why = String(cString: X509_verify_cert_error_string(verify))
                throw RedisError(
                    .tls,
                    socket.peer == "Redis"
                        ? "The Redis server's certificate was rejected: \(why). Pass the CA that signed it with cacert=, or check the host name \(host)."
                        : "\(socket.peer)'s certificate was rejected: \(why). Trust the CA that signed it (SSL_CERT_FILE), or check the host name \(host)."
                )
            }
            throw RedisError(.tls, "The TLS handshake with \(host) failed: \(Self.openSSLErrors()). Is the port a TLS port?")
        }
    }

    /// Sends what OpenSSL has written to its outgoing BIO.
    private func flushOutgoing(deadline: Deadline) throws(RedisError) {
        while BIO_ctrl_pending(outgoing) > 0 {
            let count = BIO_read(outgoing, scratch.baseAddress, Int32(scratch.count))
            guard count > 0 else { return }
            try socket.write(UnsafeRawBufferPointer(rebasing: scratch[0..<Int(count)]), deadline: deadline)
        }
    }

    /// Receives bytes from the socket into OpenSSL's incoming BIO.
    private func fillIncoming(deadline: Deadline, what: String) throws(RedisError) {
        let count: Int
        do {
            count = try socket.read(into: scratch, deadline: deadline)
        } catch where error.code == .timeout {
            throw RedisError(.timeout, "Timed out \(what).")
        }
        _ = BIO_write(incoming, scratch.baseAddress, Int32(count))
    }

    package func write(_ bytes: UnsafeRawBufferPointer, deadline: Deadline) throws(RedisError) {
        var offset = 0
        while offset < bytes.count {
            guard let base = bytes.baseAddress else { return }
            ERR_clear_error()
            let written = SSL_write(ssl, base + offset, Int32(clamping: bytes.count - offset))
            try flushOutgoing(deadline: deadline)
            if written > 0 {
                offset += Int(written)
                continue
            }
            let code = SSL_get_error(ssl, written)
            if code == SSL_ERROR_WANT_READ {
                try fillIncoming(deadline: deadline, what: "sending to \(socket.peer) over TLS")
            } else {
                throw RedisError(.tls, "TLS write to \(socket.peer) failed: \(Self.openSSLErrors()).")
            }
        }
    }

    package func read(into buffer: UnsafeMutableRawBufferPointer, deadline: Deadline) throws(RedisError) -> Int {
        while true {
            ERR_clear_error()
            let count = SSL_read(ssl, buffer.baseAddress, Int32(clamping: buffer.count))
            if count > 0 { return Int(count) }
            let code = SSL_get_error(ssl, count)
            switch code {
            case SSL_ERROR_WANT_READ:
                try flushOutgoing(deadline: deadline)
                try fillIncoming(deadline: deadline, what: "waiting for \(socket.peer) to answer")
            case SSL_ERROR_ZERO_RETURN:
                throw RedisError(.connectionClosed, "Server closed the TLS connection.")
            default:
                throw RedisError(.tls, "TLS read from \(socket.peer) failed: \(Self.openSSLErrors()).")
            }
        }
    }

    package var isReadableWhileIdle: Bool {
        socket.isReadableWhileIdle || SSL_pending(ssl) > 0 || BIO_ctrl_pending(incoming) > 0
    }

    package func shutdown() { socket.shutdown() }

    package func close() { socket.close() }

    private static func isIPAddress(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    static func openSSLErrors() -> String {
        var messages: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            messages.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return messages.isEmpty ? "no detail from OpenSSL" : messages.joined(separator: "; ")
    }
}

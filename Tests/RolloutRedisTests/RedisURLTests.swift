import RolloutRedis
import Testing

@Suite("Redis URLs")
struct RedisURLTests {
    @Test func plainHostPortAndDatabase() throws {
        let url = try RedisURL(parsing: "redis://cache.internal:6380/3")
        #expect(url.endpoint == .tcp(host: "cache.internal", port: 6380))
        #expect(url.database == 3)
        #expect(url.tls == nil)
        #expect(url.password == nil)
    }

    @Test func defaultsPortAndDatabase() throws {
        let url = try RedisURL(parsing: "redis://localhost")
        #expect(url.endpoint == .tcp(host: "localhost", port: 6379))
        #expect(url.database == 0)
    }

    @Test func userAndPasswordArePercentDecoded() throws {
        let url = try RedisURL(parsing: "redis://controller:p%40ss%3Aword@127.0.0.1:6379/0")
        #expect(url.username == "controller")
        #expect(url.password == "p@ss:word")
    }

    @Test func barePasswordWithoutUser() throws {
        let url = try RedisURL(parsing: "redis://:s3cret@127.0.0.1")
        #expect(url.username == nil)
        #expect(url.password == "s3cret")
    }

    @Test func ipv6Host() throws {
        let url = try RedisURL(parsing: "redis://[::1]:7000")
        #expect(url.endpoint == .tcp(host: "::1", port: 7000))
        #expect(url.description == "redis://[::1]:7000/0")
    }

    @Test func tlsOptions() throws {
        let url = try RedisURL(parsing: "rediss://redis.example.com:6380?cacert=/etc/ca.pem&cert=/c.pem&key=/k.pem")
        let tls = try #require(url.tls)
        #expect(tls.caCertificatePath == "/etc/ca.pem")
        #expect(tls.certificatePath == "/c.pem")
        #expect(tls.keyPath == "/k.pem")
        #expect(tls.insecure == false)
        #expect(try RedisURL(parsing: "rediss://h?insecure=true").tls?.insecure == true)
    }

    @Test func unixSocketWithDatabase() throws {
        let url = try RedisURL(parsing: "unix:///var/run/redis/redis.sock?db=2")
        #expect(url.endpoint == .unix(path: "/var/run/redis/redis.sock"))
        #expect(url.database == 2)
    }

    @Test func descriptionNeverShowsThePassword() throws {
        let url = try RedisURL(parsing: "rediss://gate:hunter2-secret@redis.example.com:6380/1?cacert=/ca.pem")
        #expect(!url.description.contains("hunter2"))
        #expect(url.description == "rediss://gate:***@redis.example.com:6380/1?cacert=/ca.pem")
        #expect(!String(describing: url).contains("hunter2"))
        let bare = try RedisURL(parsing: "redis://:hunter2@h")
        #expect(bare.description == "redis://:***@h:6379/0")
    }

    @Test(arguments: [
        ("localhost:6379", "no scheme"),
        ("http://localhost", "scheme 'http'"),
        ("redis://host:99999", "port after the last ':'"),
        ("redis://host:abc", "port after the last ':'"),
        ("redis://host/x", "database after the '/'"),
        ("redis://host?cacert=/ca.pem", "needs TLS"),
        ("rediss://host?cert=/c.pem", "go together"),
        ("redis://host?color=blue", "unknown option"),
        ("unix://relative.sock", "absolute socket path"),
        ("rediss://host?insecure=maybe", "insecure= is not true or false"),
    ])
    func invalidURLsSayWhatIsWrong(text: String, expected: String) {
        #expect {
            try RedisURL(parsing: text)
        } throws: { error in
            guard let error = error as? RedisError else { return false }
            return error.code == .invalidURL && error.message.contains(expected)
        }
    }

    @Test func invalidURLErrorsNeverEchoThePassword() {
        #expect {
            try RedisURL(parsing: "redis://user:topsecret@host:notaport")
        } throws: { error in
            !String(describing: error).contains("topsecret")
        }
    }

    /// Every malformed shape a URL with a password can take: the error never contains any part
    /// of the password (issue: a password taken for a port was echoed).
    @Test(arguments: [
        "redis://user:S3CRETPASS", "redis://user:S3CRET@PASS@host:notaport",
        "redis://user:S3CRET/PASS@host/x", "redis://user:S3CRET#PASS@host:0", "redis://user:S3CRET%PASS@host?color=blue",
        "S3CRETPASS://host", "unix://user:S3CRETPASS@relative.sock", "rediss://user:S3CRETPASS@host?insecure=S3CRETPASS",
        "redis://host:6379?password=S3CRETPASS&db=S3CRETPASS", "redis://user:S3CRETPASS@[::1",
        "http://user:S3CRETPASS@host",
    ])
    func noMalformedURLEchoesItsPassword(text: String) {
        // (A '?' or '@' inside the password parses: the user info ends at the last '@'.)
        #expect {
            try RedisURL(parsing: text)
        } throws: { error in
            let shown = String(describing: error)
            return !["S3CRET", "PASS", "S3CRETPASS"].contains { shown.contains($0) }
        }
    }
}

import RolloutRedis
import Testing

@Suite("Sentinel URLs")
struct SentinelURLTests {
    typealias Address = RedisURL.Sentinel.Address

    @Test func hostsDefaultPortDatabaseAndPrimaryName() throws {
        let url = try RedisURL(parsing: "redis-sentinel://s1.internal,s2.internal:26380,[::1]/2#mymaster")
        let sentinel = try #require(url.sentinel)
        #expect(sentinel.sentinels == [Address(host: "s1.internal", port: 26379), Address(host: "s2.internal", port: 26380), Address(host: "::1", port: 26379)])
        #expect(sentinel.primaryName == "mymaster")
        #expect(sentinel.readFrom == .primary)
        #expect(url.database == 2)
        #expect(url.tls == nil)
        #expect(url.endpoint == .tcp(host: "s1.internal", port: 26379))
        #expect(url.description == "redis-sentinel://s1.internal:26379,s2.internal:26380,[::1]:26379/2#mymaster")
    }

    @Test func dataNodeAndSentinelCredentialsAreSeparate() throws {
        let url = try RedisURL(parsing: "redis-sentinel://gate:data%23pw@127.0.0.1:26379?sentinelUser=watcher&sentinelPassword=s%40pw#cache")
        #expect(url.username == "gate")
        #expect(url.password == "data#pw")
        let sentinel = try #require(url.sentinel)
        #expect(sentinel.username == "watcher")
        #expect(sentinel.password == "s@pw")
        #expect(sentinel.primaryName == "cache")
    }

    @Test func readFromReplica() throws {
        #expect(try RedisURL(parsing: "redis-sentinel://h?readFrom=replica#m").sentinel?.readFrom == .replica)
        #expect(try RedisURL(parsing: "redis-sentinel://h?readfrom=PRIMARY#m").sentinel?.readFrom == .primary)
        #expect(try RedisURL(parsing: "redis-sentinel://h?readFrom=replica#m").description == "redis-sentinel://h:26379/0?readFrom=replica#m")
    }

    @Test func tlsOptionsAsForRediss() throws {
        let url = try RedisURL(parsing: "rediss-sentinel://h1,h2?cacert=/ca.pem&cert=/c.pem&key=/k.pem#m")
        let tls = try #require(url.tls)
        #expect(tls.caCertificatePath == "/ca.pem")
        #expect(tls.certificatePath == "/c.pem")
        #expect(tls.keyPath == "/k.pem")
        #expect(url.description == "rediss-sentinel://h1:26379,h2:26379/0?cacert=/ca.pem&cert=/c.pem&key=/k.pem#m")
    }

    @Test func descriptionHidesBothPasswords() throws {
        let url = try RedisURL(parsing: "redis-sentinel://gate:DATASECRET@h:26379?sentinelUser=w&sentinelPassword=SENTSECRET#m")
        #expect(url.description == "redis-sentinel://gate:***@h:26379/0?sentinelUser=w&sentinelPassword=***#m")
        #expect(!url.description.contains("SECRET"))
    }

    @Test(arguments: [
        ("redis-sentinel://h1,h2", "names the primary after a '#'"),
        ("redis-sentinel://h1#", "names the primary after a '#'"),
        ("redis-sentinel://h1,,h2#m", "empty entry"),
        ("redis-sentinel://h1:0#m", "port after the last ':'"),
        ("redis-sentinel://h1?readFrom=nearest#m", "readFrom= is not primary or replica"),
        ("redis-sentinel://h1?cacert=/ca.pem#m", "needs TLS"),
        ("redis://h1?readFrom=replica", "needs a sentinel URL"),
        ("redis://h1?sentinelPassword=x", "needs a sentinel URL"),
        ("redis-sentinel://h1?colour=blue#m", "sentinelUser, sentinelPassword, readFrom"),
    ])
    func invalidSentinelURLsSayWhatIsWrong(text: String, expected: String) {
        #expect {
            try RedisURL(parsing: text)
        } throws: { error in
            guard let error = error as? RedisError else { return false }
            return error.code == .invalidURL && error.message.contains(expected)
        }
    }

    @Test(arguments: [
        "redis-sentinel://user:S3CRETPASS@h1:notaport#m", "redis-sentinel://user:S3CRETPASS@h1,,h2#m",
        "redis-sentinel://user:S3CRETPASS@h1", "redis-sentinel://h1?sentinelPassword=S3CRETPASS&readFrom=S3CRETPASS#m",
        "redis-sentinel://S3CRETPASS@h1:x#m", "redis-sentinel://h1?sentinelPassword=S3CRETPASS&db=S3CRETPASS#m",
        "redis://h1?sentinelPassword=S3CRETPASS", "rediss-sentinel://:S3CRET#PASS@h:0#m",
    ])
    func noMalformedSentinelURLEchoesAPassword(text: String) {
        #expect {
            try RedisURL(parsing: text)
        } throws: { error in
            let shown = String(describing: error)
            return !["S3CRET", "PASS"].contains { shown.contains($0) }
        }
    }

    /// `rollout serve` refuses a --redis-url that is not the policy's Redis: with sentinel URLs,
    /// another primary name or sentinel list is other data; credentials and readFrom are not.
    @Test func sameDataMeansSameSentinelsAndPrimaryName() throws {
        let base = try RedisURL(parsing: "redis-sentinel://gate:a@s1,s2#m")
        #expect(base.reachesTheSameData(as: try RedisURL(parsing: "redis-sentinel://controller:b@s1:26379,s2?readFrom=replica#m")))
        #expect(!base.reachesTheSameData(as: try RedisURL(parsing: "redis-sentinel://s1,s2#other")))
        #expect(!base.reachesTheSameData(as: try RedisURL(parsing: "redis-sentinel://s1,s3#m")))
        #expect(!base.reachesTheSameData(as: try RedisURL(parsing: "redis-sentinel://s1,s2/1#m")))
        #expect(!base.reachesTheSameData(as: try RedisURL(parsing: "redis://s1:26379")))
        #expect(try RedisURL(parsing: "redis://h:6379/0").reachesTheSameData(as: try RedisURL(parsing: "redis://u:p@h")))
    }
}

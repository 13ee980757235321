import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("rediss-sentinel: TLS to the sentinels and the data nodes", .tags(.redis), .requiresRedis)
struct SentinelTLSTests {
    /// Every node and sentinel speaks TLS with certificates of one CA, and passwords on both:
    /// the sentinels hand out TLS ports only, and a write through `rediss-sentinel://...?cacert=`
    /// lands on the primary (a plain connection to a TLS port could not have done it).
    @Test func discoveryAndWritesOverTLSWithPasswords() async throws {
        let topology = try await SentinelTopology.start(password: "data-secret", sentinelPassword: "sentinel-secret", tls: true)
        let tlsPorts = Set((topology.nodes + topology.sentinels).compactMap(\.tlsPort))
        #expect(tlsPorts.count == 6)
        let named = try await topology.query(topology.sentinels[0], "SENTINEL", "get-master-addr-by-name", topology.primaryName)
        #expect(named.array?.last?.string == String(try #require(topology.nodes[0].tlsPort)))
        #expect(try await announcedPorts(topology, "replicas").isSubset(of: tlsPorts))
        #expect(try await announcedPorts(topology, "sentinels").isSubset(of: tlsPorts))

        let url = try topology.url()
        #expect(url.description.hasPrefix("rediss-sentinel://:***@"))
        #expect(url.tls?.caCertificatePath == topology.certificates?.caCertificate)
        let client = RedisClient(url: url)
        defer { client.close() }
        #expect(try await client.send("SET", "flags:tls:enabled", "true") == .status("OK"))
        #expect(try await topology.query(topology.nodes[0], "GET", "flags:tls:enabled").string == "true")
        await topology.stopOffPool()
    }

    /// A CA that signed nothing here, or none (the system's trust store): the connect fails,
    /// naming each sentinel and that its certificate was rejected, with neither password.
    @Test func aWrongOrMissingCACertificateFailsNamingEachSentinel() async throws {
        let topology = try await SentinelTopology.start(password: "data-secret", sentinelPassword: "sentinel-secret", tls: true)
        let certificates = try #require(topology.certificates)
        for ca in [certificates.otherCACertificate, ""] {
            let client = RedisClient(url: try topology.url(caCertificate: ca))
            defer { client.close() }
            do {
                _ = try await client.send("PING")
                Issue.record("PING succeeded with cacert=\(ca)")
            } catch {
                #expect(error.code == .connectFailed)
                for sentinel in topology.sentinels {
                    #expect(error.message.contains("127.0.0.1:\(topology.announcedPort(of: sentinel)) (TLS: The Redis server's certificate was rejected"))
                }
                #expect(error.message.contains("cacert="))
                #expect(!error.message.contains("secret"))
                print("rediss-sentinel with cacert=\(ca.isEmpty ? "(none)" : ca): \(error.message)")
            }
        }
        await topology.stopOffPool()
    }
}

/// The ports `SENTINEL <list> mymaster` (replicas or sentinels) reports, asked of the first sentinel.
private func announcedPorts(_ topology: SentinelTopology, _ list: String) async throws -> Set<Int> {
    let entries = try await topology.query(topology.sentinels[0], "SENTINEL", list, topology.primaryName).array ?? []
    var ports: Set<Int> = []
    for entry in entries {
        let fields = entry.array?.compactMap(\.string) ?? []
        if let index = fields.firstIndex(of: "port"), fields.indices.contains(index + 1), let port = Int(fields[index + 1]) { ports.insert(port) }
    }
    #expect(ports.count == 2)
    return ports
}

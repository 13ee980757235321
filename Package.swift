// swift-tools-version: 6.1
import PackageDescription

// Shared by every Swift target: no C type can leak into a public signature, and
// every existential is spelled `any`.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "rollout-gate",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RolloutGate", targets: ["RolloutGate"]),
        .library(name: "RolloutRedis", targets: ["RolloutRedis"]),
        // For services' tests: a FeatureGate over features in memory, no Redis.
        .library(name: "RolloutGateTesting", targets: ["RolloutGateTesting"]),
        .executable(name: "rollout", targets: ["rollout"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // hiredis 0.14 from Debian's libhiredis-dev: its RESP reader and command formatter only.
        .systemLibrary(name: "CHiredis", providers: [.apt(["libhiredis-dev"])]),
        // OpenSSL from Debian's libssl-dev: the SHA-256 fast path and the TLS calls Swift
        // cannot import (C macros).
        .target(
            name: "CRolloutCrypto",
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        // membarrier(2), a compiler barrier and raw-memory atomic adds for the gate's lock-free
        // snapshot (Sources/RolloutGate/ReadSide.swift).
        .target(name: "CRolloutSync"),
        .target(
            name: "RolloutRedis",
            dependencies: [
                "CHiredis",
                "CRolloutCrypto",
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "RolloutGate",
            dependencies: [
                "RolloutRedis",
                "CRolloutCrypto",
                "CRolloutSync",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // TestFlags: the gate with its snapshot set by a test, deciding with the production code.
        .target(
            name: "RolloutGateTesting",
            dependencies: ["RolloutGate", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // The audit trail: records in a Redis stream, written by the scripts that change
        // features, and their Markdown projection with its catch-up.
        .target(
            name: "RolloutAudit",
            dependencies: ["RolloutGate", "RolloutRedis"],
            swiftSettings: swiftSettings
        ),
        // The Lua scripts of redis/, compiled in with #embed: one copy of each, the file operators
        // read, and nothing to find next to the binary at run time (see Sources/CRolloutScripts).
        .target(name: "CRolloutScripts"),
        // The dashboard's page, script and style (plain files in assets/), compiled in the same way.
        .target(name: "CRolloutDashboard", exclude: ["assets"]),
        .target(
            name: "RolloutAdmin",
            dependencies: [
                "CRolloutScripts",
                "RolloutAudit",
                "RolloutGate",
                "RolloutRedis",
                "CRolloutCrypto",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The controller: policy, the pure decision, Prometheus, compare-and-set apply, telemetry.
        .target(
            name: "RolloutController",
            dependencies: [
                "RolloutAdmin",
                "RolloutAudit",
                "RolloutGate",
                "RolloutRedis",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: swiftSettings
        ),
        // The quickstart's demo service: a Hummingbird app whose requests go through the gate.
        .target(
            name: "RolloutDemo",
            dependencies: [
                "RolloutGate",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        // `rollout serve`: the gate over HTTP (OFREP) for services in any language.
        .target(
            name: "RolloutServe",
            dependencies: [
                "RolloutAdmin",
                "RolloutAudit",
                "RolloutGate",
                "RolloutController",
                "RolloutRedis",
                "CRolloutCrypto",
                "CRolloutDashboard",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "rollout",
            dependencies: [
                "RolloutDemo",
                "RolloutServe",
                .product(name: "Hummingbird", package: "hummingbird"),
                "RolloutAdmin",
                "RolloutAudit",
                "RolloutController",
                "RolloutGate",
                "RolloutRedis",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Benchmarks (scripts/bench.sh): plain timing loops over our modules. The failover mode
        // starts the tests' Sentinel topology (RolloutTestSupport), which only this
        // executable and the test targets link: the shipped `rollout` never does. The cohort
        // mode simulates rollouts through RolloutController's cohort comparison.
        .executableTarget(
            name: "rollout-bench",
            dependencies: [
                "RolloutGate", "RolloutRedis", "CRolloutCrypto", "RolloutTestSupport", "RolloutController",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Fixtures for tests: real redis-server processes on free loopback ports.
        .target(
            name: "RolloutTestSupport",
            dependencies: ["RolloutRedis"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RolloutRedisTests",
            dependencies: ["RolloutRedis", "RolloutTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RolloutGateTests",
            dependencies: [
                "RolloutGate", "RolloutGateTesting", "RolloutRedis", "RolloutTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryLogging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RolloutAdminTests",
            dependencies: ["RolloutAdmin", "RolloutAudit", "RolloutGate", "RolloutRedis", "RolloutTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RolloutControllerTests",
            dependencies: [
                "RolloutAdmin", "RolloutAudit", "RolloutController", "RolloutGate", "RolloutRedis", "RolloutTestSupport",
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            // cohort_vectors.py: the reference values of CohortComparisonTests.
            exclude: ["Fixtures"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RolloutServeTests",
            dependencies: [
                "RolloutServe", "RolloutGate", "RolloutRedis", "RolloutTestSupport", "RolloutController", "CRolloutDashboard",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            // The Python clients (OpenFeature's SDK, selenium driving chromium), run with
            // scripts/test.sh's virtual environments.
            exclude: ["Clients"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RolloutCLITests",
            // `rollout` itself for its pure parts (RolloutExit); everything else runs the binary.
            dependencies: ["rollout", "RolloutAdmin", "RolloutController", "RolloutGate", "RolloutRedis", "RolloutTestSupport"],
            // Golden: help texts; Fixtures/original_gate.py: the original Python gate's rule.
            exclude: ["Golden", "Fixtures"],
            swiftSettings: swiftSettings
        ),
    ]
)

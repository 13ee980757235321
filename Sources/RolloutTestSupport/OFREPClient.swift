import Foundation
public import Testing

/// The Python interpreter of the virtual environment scripts/test.sh makes, with the OpenFeature
/// SDK and its OFREP provider from PyPI: `ROLLOUT_TEST_PYTHON`, else
/// `.build/python-ofrep/bin/python` under the package.
public func ofrepPython() -> String? {
    let candidates = [ProcessInfo.processInfo.environment["ROLLOUT_TEST_PYTHON"], FileManager.default.currentDirectoryPath + "/.build/python-ofrep/bin/python"]
    return candidates.compactMap { $0 }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

extension Trait where Self == ConditionTrait {
    /// Skips on a laptop without the OpenFeature Python SDK; in CI (`CI=true`) the test runs and fails.
    public static var requiresOFREPClient: Self {
        .enabled(
            if: isCI || (ofrepPython() != nil && executablePath("redis-server") != nil),
            "the OpenFeature Python SDK is not installed (scripts/test.sh makes .build/python-ofrep)")
    }
}

/// schemathesis from scripts/test.sh's virtual environment (or `ROLLOUT_TEST_SCHEMATHESIS`).
public func schemathesis() -> String? {
    let candidates = [
        ProcessInfo.processInfo.environment["ROLLOUT_TEST_SCHEMATHESIS"],
        FileManager.default.currentDirectoryPath + "/.build/python-schemathesis/bin/schemathesis",
    ]
    return candidates.compactMap { $0 }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

extension Trait where Self == ConditionTrait {
    /// Skips on a laptop without schemathesis; in CI (`CI=true`) the test runs and fails.
    public static var requiresSchemathesis: Self {
        .enabled(
            if: isCI || (schemathesis() != nil && executablePath("redis-server") != nil),
            "schemathesis is not installed (scripts/test.sh makes .build/python-schemathesis)")
    }
}

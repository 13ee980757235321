import Foundation
public import Testing

/// The Python interpreter of the virtual environment scripts/test.sh makes with selenium from
/// PyPI, which drives Debian's chromium through Debian's chromedriver: `ROLLOUT_TEST_BROWSER_PYTHON`,
/// else `.build/python-browser/bin/python` under the package. nil unless chromium and chromedriver
/// are installed too.
public func browserPython() -> String? {
    let candidates = [
        ProcessInfo.processInfo.environment["ROLLOUT_TEST_BROWSER_PYTHON"],
        FileManager.default.currentDirectoryPath + "/.build/python-browser/bin/python",
    ]
    guard FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium"), FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver")
    else { return nil }
    return candidates.compactMap { $0 }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

extension Trait where Self == ConditionTrait {
    /// Skips on a laptop without chromium, chromedriver or selenium; in CI (`CI=true`) the test runs and fails.
    public static var requiresBrowser: Self {
        .enabled(
            if: isCI || (browserPython() != nil && executablePath("redis-server") != nil),
            "chromium, chromium-driver or selenium is not installed (scripts/test.sh installs them into .build/python-browser)")
    }
}

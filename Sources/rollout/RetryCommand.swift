import ArgumentParser
import Foundation
import RolloutController
import RolloutGate
import RolloutRedis

struct RetryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retry",
        abstract: "Run a command until it succeeds, with the controller's retry policy (for deploy pipelines' rollback steps).",
        discussion: """
            Example: rollout retry --attempts 3 --base-delay 5s -- rollout flags set-percent google 10 --reason rollback
            Exponential by default: the delay after attempt n is base x 2^(n-1); --jitter draws each delay \
            from zero to that. The command's output passes through; each attempt and its delay are logged \
            to stderr; the exit code is the last attempt's.
            """
    )
    @Option(help: "Attempts in all, the first included.") var attempts = 3
    @Option(name: .customLong("base-delay"), help: ArgumentHelp("The delay after the first failure (e.g. 500ms, 5s).", valueName: "duration"))
    var baseDelay = "1s"
    @Option(help: ArgumentHelp("exponential, linear or fixed.", valueName: "policy")) var policy = "exponential"
    @Option(name: .customLong("max-delay"), help: ArgumentHelp("No delay is longer than this (e.g. 5m).", valueName: "duration"))
    var maxDelay: String?
    @Flag(help: "Full jitter: each delay is drawn from zero to the computed delay.") var jitter = false
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

    func retryPolicy() throws -> RetryPolicy {
        guard attempts >= 1 else { throw ValidationError("--attempts must be 1 or more, not \(attempts).") }
        let base = try boundedDuration("--base-delay", baseDelay, in: PolicyDurationRange.retryDelay)
        guard let backoff = RetryPolicy.Backoff(rawValue: policy) else {
            throw ValidationError("--policy \(policy) is not exponential, linear or fixed.")
        }
        var cap: Duration?
        if let maxDelay {
            cap = try boundedDuration("--max-delay", maxDelay, in: PolicyDurationRange.retryDelay)
        }
        return RetryPolicy(backoff: backoff, baseDelay: base, maxDelay: cap, maxAttempts: attempts, jitter: jitter)
    }

    func validate() throws {
        _ = try retryPolicy()
        guard let program = command.first, !program.isEmpty else {
            throw ValidationError("Give the command after --, e.g. rollout retry --attempts 3 -- curl -f https://example.com")
        }
        guard resolveExecutable(program) != nil else {
            throw ValidationError("The command '\(program)' was not found on PATH or is not executable; nothing was run.")
        }
    }

    func run() async throws {
        let retry = try retryPolicy()
        guard let program = command.first, let path = resolveExecutable(program) else {
            throw ValidationError("The command '\(command.first ?? "")' was not found on PATH or is not executable; nothing was run.")
        }
        let command = command
        // The waits are Task.sleep on the clock and the child is reaped on a thread of its own:
        // nothing here blocks Swift's cooperative pool.
        let (status, attempts) = try await retry.run(on: ContinuousClock()) { _ in
            try await spawnAndWait(path, command)
        } failed: { attempt, status, delay in
            if let delay {
                log("attempt \(attempt)/\(retry.maxAttempts) exited \(status); next attempt in \(formatDelay(delay))")
            } else {
                log("attempt \(attempt)/\(retry.maxAttempts) exited \(status); giving up")
            }
        }
        if status == 0 {
            if attempts > 1 { log("attempt \(attempts)/\(retry.maxAttempts) succeeded") }
            return
        }
        throw ExitCode(status)
    }

    private func log(_ text: String) {
        FileHandle.standardError.write(Data("rollout retry: \(text)\n".utf8))
    }

    private func formatDelay(_ delay: Duration) -> String {
        let milliseconds = delay.wholeMilliseconds
        return milliseconds < 1000 ? "\(milliseconds)ms" : formatDuration(delay)
    }
}

/// The path of `program`: as given when it holds a '/', else the first match on PATH.
func resolveExecutable(_ program: String) -> String? {
    if program.contains("/") { return access(program, X_OK) == 0 ? program : nil }
    for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let candidate = "\(directory)/\(program)"
        var info = stat()
        if access(candidate, X_OK) == 0 && stat(candidate, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG { return candidate }
    }
    return nil
}

/// Runs `path` with `arguments` (argv[0] included), inheriting stdin, stdout and stderr, and
/// returns its exit status (128 + the signal when killed). `waitpid` blocks for as long as the
/// child runs, so it runs on a thread of its own (``onOwnThread(_:)``).
func spawnAndWait(_ path: String, _ arguments: [String]) async throws -> Int32 {
    let argv = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, path, nil, nil, argv, environ)
    guard result == 0 else {
        throw ValidationError("Cannot run \(path): \(String(cString: strerror(result))).")
    }
    let child = pid
    let status = await onOwnThread { () -> Int32 in
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        return status
    }
    if status & 0x7f == 0 { return (status >> 8) & 0xff }
    return 128 + (status & 0x7f)
}

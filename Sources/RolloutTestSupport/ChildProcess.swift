public import Foundation
import Synchronization

/// Every child started and not reaped yet: killed when the test process exits, so a fixture
/// a test never released (or a crash of the test process) leaves no server running.
private let unreapedChildren = Mutex<Set<pid_t>>([])

private let killUnreapedChildrenAtExit: Void = {
    atexit {
        for pid in unreapedChildren.withLock({ $0 }) { kill(pid, SIGKILL) }
    }
}()

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later), which Swift's Glibc
/// module does not declare.
private let closeFromInChild: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
}()

/// A child process started with posix_spawn and reaped with waitpid. Foundation's `Process`
/// waits by running a run loop, which can hang on a thread of Swift's cooperative pool.
public final class ChildProcess: @unchecked Sendable {
    // @unchecked: `status` is guarded by `lock`; `pid` is immutable.
    public let pid: pid_t
    private let lock = NSLock()
    private var status: Int32?

    /// Starts `executable` with `arguments`; stdout and stderr go to the file `output`,
    /// stdin reads /dev/null unless `input` names a file.
    public convenience init(_ executable: String, _ arguments: [String], output: String, input: String = "/dev/null", environment: [String: String]? = nil) throws {
        try self.init(executable, arguments, stdout: output, stderr: nil, input: input, environment: environment)
    }

    /// Starts `executable` with stdout and stderr to separate files (stderr to stdout's when nil).
    public init(
        _ executable: String, _ arguments: [String], stdout: String, stderr: String?, input: String = "/dev/null",
        environment: [String: String]? = nil
    ) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, input, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        if let stderr {
            posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        } else {
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        // Nothing else of this process reaches the child: a socket a fixture accepted without
        // close-on-exec (or any descriptor another test opened meanwhile) stays open in a
        // long-lived child, so closing it here would not end the connection.
        if let closeFrom = closeFromInChild { _ = closeFrom(&actions, 3) }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let env = environment ?? ProcessInfo.processInfo.environment
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        // Threads of the test process block signals; without resetting the mask the child
        // inherits it and ignores SIGTERM.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        sigdelset(&allSignals, SIGKILL)
        sigdelset(&allSignals, SIGSTOP)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else { throw FixtureError("cannot start \(executable): \(String(cString: strerror(result)))") }
        self.pid = pid
        _ = killUnreapedChildrenAtExit
        unreapedChildren.withLock { _ = $0.insert(pid) }
    }

    deinit { terminate(SIGKILL) }

    /// Whether the process has exited (reaping it if so).
    public func hasExited() -> Bool {
        lock.withLock {
            if status != nil { return true }
            var raw: Int32 = 0
            if waitpid(pid, &raw, WNOHANG) == pid {
                status = raw
                unreapedChildren.withLock { _ = $0.remove(pid) }
                return true
            }
            return false
        }
    }

    /// Waits for the process to exit and returns its exit status (128 + signal if killed).
    @discardableResult
    public func wait() -> Int32 {
        lock.withLock {
            if status == nil {
                var raw: Int32 = 0
                while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
                status = raw
                unreapedChildren.withLock { _ = $0.remove(pid) }
            }
            let raw = status ?? 0
            // WIFEXITED / WEXITSTATUS / WTERMSIG are macros; decode by hand.
            if raw & 0x7f == 0 { return (raw >> 8) & 0xff }
            return 128 + (raw & 0x7f)
        }
    }

    /// Waits for the process to exit, off the cooperative pool.
    public func exitStatus() async -> Int32 {
        (try? await offThePool { [self] in wait() }) ?? -1
    }

    /// Sends `signal` unless the process has exited, then waits for it.
    public func terminate(_ signal: Int32 = SIGTERM) {
        if !hasExited() {
            kill(pid, signal)
        }
        wait()
    }

    /// ``terminate(_:)`` from async code: the wait runs off the cooperative pool.
    public func terminateOffPool(_ signal: Int32 = SIGTERM) async {
        _ = try? await offThePool { [self] in terminate(signal) }
    }
}

/// The result of running a command to completion.
public struct CommandResult: Sendable {
    /// The exit status (128 + signal when killed).
    public let status: Int32
    /// Everything written to stdout.
    public let stdout: String
    /// Everything written to stderr.
    public let stderr: String
}

/// Runs blocking `body` on a thread of its own and awaits it: fixtures that wait for processes
/// or poll servers must not hold a thread of Swift's cooperative pool (two threads on two
/// cores), or every other test's continuation waits behind them.
public func offThePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.start()
    }
}

/// Runs `body(thread)` on `threads` threads of their own, all started before any begins (so
/// they run at once, as request threads do), and awaits them all without holding a thread of
/// the cooperative pool.
public func onThreadsAtOnce(_ threads: Int, _ body: @escaping @Sendable (_ thread: Int) -> Void) async throws {
    let started = DispatchSemaphore(value: 0)
    let go = DispatchSemaphore(value: 0)
    let done = DispatchSemaphore(value: 0)
    for thread in 0..<threads {
        Thread {
            started.signal()
            go.wait()
            body(thread)
            done.signal()
        }.start()
    }
    try await offThePool { for _ in 0..<threads { started.wait() } }
    for _ in 0..<threads { go.signal() }
    try await offThePool { for _ in 0..<threads { done.wait() } }
}

/// Stops a released fixture's server (SIGTERM, then waits) and removes its directory on a
/// thread of its own: a deinit never blocks the releasing thread, often one of the
/// cooperative pool's two, while the server shuts down.
func stopInBackground(_ process: ChildProcess?, removing directory: String) {
    Thread {
        process?.terminate(SIGTERM)
        try? FileManager.default.removeItem(atPath: directory)
    }.start()
}

/// Runs `executable` to completion (see ``runCommandBlocking(_:_:environment:input:)``), off
/// the cooperative pool.
public func runCommand(_ executable: String, _ arguments: [String], environment: [String: String] = [:], input: String = "") async throws
    -> CommandResult
{
    try await offThePool { try runCommandBlocking(executable, arguments, environment: environment, input: input) }
}

/// Runs `executable` to completion with `environment` added to this process's, feeding
/// `input` on stdin; collects stdout and stderr. Blocks the calling thread.
public func runCommandBlocking(_ executable: String, _ arguments: [String], environment: [String: String] = [:], input: String = "") throws
    -> CommandResult
{
    let directory = try makeTemporaryDirectory("cmd")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let inputPath = directory + "/stdin"
    try input.write(toFile: inputPath, atomically: true, encoding: .utf8)
    var env = ProcessInfo.processInfo.environment
    env.merge(environment) { _, new in new }
    let out = directory + "/stdout"
    let err = directory + "/stderr"
    let process = try ChildProcess(executable, arguments, stdout: out, stderr: err, input: inputPath, environment: env)
    let status = process.wait()
    return CommandResult(
        status: status, stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
        stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
}

/// A child process whose stdin and stdout are pipes to this process, for conversations.
public final class PipedProcess: @unchecked Sendable {
    // @unchecked: the descriptors are used by one test task at a time.
    public let process: ChildProcess
    /// -1 once closed: a descriptor number is closed exactly once, or a second close could hit
    /// a socket that another test (or NIO, in this process) opened under the same number since.
    private let toChild: Mutex<Int32>
    private let fromChild: Int32
    private var buffered: [UInt8] = []

    public init(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        var input: [Int32] = [0, 0]
        var output: [Int32] = [0, 0]
        guard pipe(&input) == 0, pipe(&output) == 0 else { throw FixtureError("pipe() failed") }
        // Close-on-exec, so no child holds these pipes open (this one opens its stdin and
        // stdout anew from them).
        for fd in input + output { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { _, new in new }
        process = try ChildProcess(
            executable, arguments, stdout: "/dev/fd/\(output[1])", stderr: "/dev/null", input: "/dev/fd/\(input[0])", environment: env)
        close(input[0])
        close(output[1])
        toChild = Mutex(input[1])
        fromChild = output[0]
    }

    deinit {
        closeInput()
        close(fromChild)
        process.terminate(SIGKILL)
    }

    /// Writes one line to the child's stdin.
    public func send(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        toChild.withLock { fd in
            guard fd >= 0 else { return }
            _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        }
    }

    /// Closes the child's stdin (once, however often it is called).
    public func closeInput() {
        toChild.withLock { fd in
            guard fd >= 0 else { return }
            close(fd)
            fd = -1
        }
    }

    /// Reads one line from the child's stdout, off the cooperative pool.
    public func nextLine(timeout: Duration = .seconds(10)) async -> String? {
        (try? await offThePool { [self] in readLine(timeout: timeout) }) ?? nil
    }

    /// Reads one line from the child's stdout, or nil at end of stream or after `timeout`.
    public func readLine(timeout: Duration = .seconds(10)) -> String? {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            if let newline = buffered.firstIndex(of: 10) {
                let line = String(decoding: buffered[..<newline], as: UTF8.self)
                buffered.removeFirst(newline + 1)
                return line
            }
            let remaining = ContinuousClock.now.duration(to: deadline)
            if remaining <= .zero { return nil }
            var descriptor = pollfd(fd: fromChild, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000)
            guard poll(&descriptor, 1, max(1, milliseconds)) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = chunk.withUnsafeMutableBytes { read(fromChild, $0.baseAddress, $0.count) }
            if count <= 0 { return nil }
            buffered.append(contentsOf: chunk[0..<count])
        }
    }
}

/// The `rollout` binary built beside the test bundle (scripts/test.sh builds it first).
public func rolloutBinary() throws -> String {
    let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    var directory = URL(fileURLWithPath: executable).deletingLastPathComponent()
    // On Linux the test bundle is a plain executable in the build folder: the binary is its sibling.
    for _ in 0..<3 {
        let candidate = directory.appendingPathComponent("rollout").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        directory = directory.deletingLastPathComponent()
    }
    throw FixtureError("the rollout binary is not built next to the tests: run `swift build` first (scripts/test.sh does)")
}

/// Polls `condition` every `interval` until it holds or `limit` passes; returns whether it
/// held. The one way tests wait for an event they cannot be told of: `limit` only bounds a
/// failure, so it can be generous.
public func eventually(
    within limit: Duration = .seconds(30), every interval: Duration = .milliseconds(5), _ condition: () async -> Bool
) async -> Bool {
    let deadline = ContinuousClock.now.advanced(by: limit)
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: interval)
    }
    return await condition()
}

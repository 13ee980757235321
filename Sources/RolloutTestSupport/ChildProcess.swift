public import Foundation

/// A child process started with posix_spawn and reaped with waitpid. Foundation's `Process`
/// waits by running a run loop, which can hang on a thread of Swift's cooperative pool.
public final class ChildProcess: @unchecked Sendable {
    // @unchecked: `status` is guarded by `lock`; `pid` is immutable.
    public let pid: pid_t
    private let lock = NSLock()
    private var status: Int32?

    /// Starts `executable` with `arguments`; stdout and stderr go to the file `output`,
    /// stdin reads /dev/null unless `input` names a file.
    public init(_ executable: String, _ arguments: [String], output: String, input: String = "/dev/null", environment: [String: String]? = nil) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, input, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
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
    }

    deinit { terminate(SIGKILL) }

    /// Whether the process has exited (reaping it if so).
    public func hasExited() -> Bool {
        lock.withLock {
            if status != nil { return true }
            var raw: Int32 = 0
            if waitpid(pid, &raw, WNOHANG) == pid {
                status = raw
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
            }
            let raw = status ?? 0
            // WIFEXITED / WEXITSTATUS / WTERMSIG are macros; decode by hand.
            if raw & 0x7f == 0 { return (raw >> 8) & 0xff }
            return 128 + (raw & 0x7f)
        }
    }

    /// Sends `signal` unless the process has exited, then waits for it.
    public func terminate(_ signal: Int32 = SIGTERM) {
        if !hasExited() {
            kill(pid, signal)
        }
        wait()
    }
}

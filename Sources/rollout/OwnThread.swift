import Foundation

/// Runs `body` on a thread of its own and returns its result: for calls that block for as long
/// as something outside the process decides (a child's `waitpid`, a file or pipe read), which
/// must never hold one of the cooperative pool's few threads.
func onOwnThread<Value: Sendable>(_ body: @escaping @Sendable () -> Value) async -> Value {
    await withCheckedContinuation { (continuation: CheckedContinuation<Value, Never>) in
        Thread { continuation.resume(returning: body()) }.start()
    }
}

import ArgumentParser
import Dispatch
import Foundation
import Logging
import RolloutAudit
import RolloutController
import Synchronization
import RolloutGate

struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Watch one feature after a change: apply its rollback checks at every poll, promote nothing.",
        discussion: """
            Polls every --fast-interval for the first --fast-period, then every --slow-interval, until \
            --for has passed. A violated rollback check rolls back at once, exactly as the controller would \
            (compare-and-set, guard, flap protection, audit log). Exit codes: 0 the window passed clean, 1 \
            it rolled back (or a poll could not reach Prometheus or Redis), 2 invalid input, 130 stopped by \
            Ctrl-C (it says where it stood).
            """
    )
    @OptionGroup var policyOptions: ControllerCommand.PolicyOptions
    @Argument(help: "The feature.") var feature: String
    @Option(name: .customLong("for"), help: ArgumentHelp("How long to watch, e.g. 60m.", valueName: "duration")) var window = "60m"
    @Option(help: ArgumentHelp("The poll interval at first.", valueName: "duration")) var fastInterval = "30s"
    @Option(help: ArgumentHelp("How long the fast interval lasts.", valueName: "duration")) var fastPeriod = "5m"
    @Option(help: ArgumentHelp("The poll interval after that.", valueName: "duration")) var slowInterval = "2m"
    @Flag(name: .long, help: "Evaluate, write nothing to Redis.") var dryRun = false

    func validate() throws {
        _ = try boundedDuration("--for", window, in: .seconds(1)...PolicyDurationRange.wait.upperBound)
        _ = try boundedDuration("--fast-period", fastPeriod, in: PolicyDurationRange.wait)
        for (name, text) in [("--fast-interval", fastInterval), ("--slow-interval", slowInterval)] {
            _ = try boundedDuration(name, text, in: .milliseconds(100)...(.seconds(86_400)))
        }
    }

    func run() async throws {
        let name = try featureName(feature)
        let policy = try await policyOptions.load(dryRun: dryRun)
        guard policy.features.contains(where: { $0.feature == name }) else {
            throw ValidationError("\(name) is not a feature of the policy file; its features: \(policy.features.map(\.feature.rawValue).joined(separator: ", ")).")
        }
        let plan = WatchPlan(
            window: parsePolicyDuration(window) ?? .seconds(3600), fastInterval: parsePolicyDuration(fastInterval) ?? .seconds(30),
            fastPeriod: parsePolicyDuration(fastPeriod) ?? .seconds(300), slowInterval: parsePolicyDuration(slowInterval) ?? .seconds(120))
        if !policy.dryRun { try await AuditLog(path: policy.auditLog).preflight() }
        let controller = Controller(policy: policy, logger: Logger(label: "rollout-watch"))
        defer { fflush(nil) }
        print("watching \(name) for \(formatDuration(plan.window)): every \(formatDuration(plan.fastInterval)) for \(formatDuration(plan.fastPeriod)), then every \(formatDuration(plan.slowInterval))")

        // Ctrl-C and SIGTERM stop the watch between polls: a poll in flight (and its rollback)
        // always finishes; only the wait is cut short.
        let stop = StopRequest()
        let signals = [SIGINT, SIGTERM].map { number -> any DispatchSourceSignal in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { stop.request() }
            source.resume()
            return source
        }
        let outcome = await watchLoop(controller, name, plan, stop: stop)
        signals.forEach { $0.cancel() }
        print(outcome.summary)
        if outcome.status != .success { throw outcome.status.exit }
    }

    private func watchLoop(_ controller: Controller, _ name: FeatureName, _ plan: WatchPlan, stop: StopRequest) async -> WatchOutcome {
        let clock = ContinuousClock()
        let start = clock.now
        var outcome = WatchOutcome(feature: name, window: plan.window)
        var notifying: Task<Void, Never>?
        while true {
            let report = await controller.run(features: [name], promotions: false)
            let elapsed = start.duration(to: clock.now)
            outcome.record(report.features.first, failed: RolloutExit(of: report) != .success, at: elapsed)
            print(outcome.lastLine)
            fflush(nil)  // a pipeline (or a person behind `tee`) sees each poll as it happens
            // Notifications go out beside the next wait, one delivery after the other, so a slow
            // webhook never delays the next rollback check.
            let previous = notifying
            notifying = Task {
                await previous?.value
                _ = await controller.notify(report)
            }
            if outcome.rolledBack || elapsed >= plan.window { break }
            let until = clock.now.advanced(by: min(plan.interval(at: elapsed), plan.window - elapsed))
            while clock.now < until && !stop.isRequested {
                try? await Task.sleep(for: min(.milliseconds(100), clock.now.duration(to: until)))
            }
            if stop.isRequested {
                outcome.interrupted = true
                outcome.elapsed = start.duration(to: clock.now)
                break
            }
        }
        await notifying?.value
        return outcome
    }
}

/// Set by a signal handler, read by the watch loop between polls.
final class StopRequest: Sendable {
    private let requested = Atomic<Bool>(false)
    func request() { requested.store(true, ordering: .relaxed) }
    var isRequested: Bool { requested.load(ordering: .relaxed) }
}

/// When `rollout watch` polls.
struct WatchPlan {
    var window: Duration
    var fastInterval: Duration
    var fastPeriod: Duration
    var slowInterval: Duration

    /// The wait after a poll made `elapsed` into the window.
    func interval(at elapsed: Duration) -> Duration { elapsed < fastPeriod ? fastInterval : slowInterval }
}

/// What a watch has seen so far.
struct WatchOutcome {
    let feature: FeatureName
    let window: Duration
    var polls = 0
    var failedPolls = 0
    var rolledBack = false
    var interrupted = false
    var elapsed: Duration = .zero
    var lastLine = ""
    var percent: RolloutPercent?

    mutating func record(_ report: FeatureReport?, failed: Bool, at elapsed: Duration) {
        polls += 1
        self.elapsed = elapsed
        guard let report else {
            failedPolls += 1
            lastLine = "[+\(formatDuration(elapsed))] no report"
            return
        }
        percent = report.targetPercent ?? percent
        if failed { failedPolls += 1 }
        let checks = report.verdict?.checks.map { "\($0.name)=\(format($0.value)) \($0.status.rawValue)" }.joined(separator: "  ") ?? ""
        let action = report.holdReason.map { "hold [\($0.rawValue)]" } ?? report.result
        lastLine = "[+\(formatDuration(elapsed))] \(report.state.map { "\($0.rolloutPercent)%" } ?? "?")  \(checks)  -> \(action): \(report.explanation.isEmpty ? report.verdict?.explanation ?? "" : report.explanation)"
        if report.result == "rollback" && (report.applied || report.recommended) { rolledBack = true }
    }

    var status: RolloutExit {
        RolloutExit(watchRolledBack: rolledBack, failedPolls: failedPolls, interrupted: interrupted)
    }

    var summary: String {
        let at = percent.map { " at \($0)%" } ?? ""
        if interrupted {
            let state = rolledBack ? "rolled back" : (failedPolls > 0 ? "\(failedPolls) poll(s) could not evaluate" : "clean so far")
            return "stopped by a signal after \(formatDuration(elapsed)) of \(formatDuration(window)): \(polls) poll(s), \(feature)\(at), \(state)"
        }
        if rolledBack { return "rolled back after \(formatDuration(elapsed)): \(feature) is now\(at)" }
        if failedPolls > 0 {
            return "not clean: \(failedPolls) of \(polls) poll(s) could not reach Prometheus or Redis; \(feature)\(at)"
        }
        return "clean: \(polls) poll(s) over \(formatDuration(window)), \(feature)\(at), no rollback"
    }
}

public import Logging
public import RolloutGate
import Synchronization

/// Features in memory, for testing code behind a flag without a Redis server.
///
/// ```swift
/// let flags = TestFlags()
/// let service = Checkout(gate: flags.gate)   // the FeatureGate production code takes
/// flags.set("new-checkout", percent: 50)
/// flags.set("new-checkout", .allow("user-1"))
/// #expect(service.usesNewCheckout(for: Subject(id: "user-1")))
/// ```
///
/// Checks on ``gate`` see every change at once and decide with the production code: the same
/// bucketing, rule order and reasons as a gate reading Redis. A feature never set is off with
/// reason `no_data`, as it is for a gate that has not read it yet.
public final class TestFlags: Sendable {
    /// A change to one feature, applied on top of its current state.
    public enum Change: Sendable, Hashable {
        /// The kill switch: `enabled` false, off for everyone.
        case kill
        /// Clears the kill switch.
        case enable
        /// Puts a stickiness key (`<id>`, or `<workspace>:<id>`) in the allow set: always on.
        case allow(String)
        /// Puts a stickiness key in the deny set: always off.
        case deny(String)
        /// Only internal subjects may see the feature (or, with false, everyone may).
        case internalOnly(Bool)
        /// A workspace's percent, overriding the rollout percent for its subjects.
        case workspace(String, percent: Double)
        /// The bucketing scheme (v1 is the original Python gate's).
        case bucketing(BucketingScheme)
    }

    /// The gate to hand to the code under test.
    public let gate: FeatureGate
    private let states = Mutex<[FeatureName: FeatureState]>([:])

    /// No features yet. `environment` is where `ROLLOUT_<FEATURE>_ENABLED` is looked up
    /// (empty by default, so the test process's own environment cannot leak in).
    /// `FLAGS_<FEATURE>_ROLLOUT_PERCENT` never applies here: a test sets its percents.
    public init(environment: [String: String] = [:], logger: Logger = Logger(label: "rollout-gate-testing")) {
        var configuration = FeatureGate.Configuration()
        configuration.environment = environment
        gate = FeatureGate(testingWith: configuration, logger: logger)
    }

    /// Sets the rollout percent of `feature` (0 to 100, at most three decimals), creating it.
    public func set(_ feature: FeatureName, percent: Double) {
        update(feature) { $0.rolloutPercent = Self.percent(percent) }
    }

    /// Applies `change` to `feature`, creating it (at 0%) if it has no state yet.
    public func set(_ feature: FeatureName, _ change: Change) {
        update(feature) { state in
            switch change {
            case .kill: state.enabled = false
            case .enable: state.enabled = true
            case .allow(let key):
                state.allow.insert(key)
                state.deny.remove(key)
            case .deny(let key):
                state.deny.insert(key)
                state.allow.remove(key)
            case .internalOnly(let only): state.internalOnly = only
            case .workspace(let workspace, let percent): state.workspaces[workspace] = Self.percent(percent)
            case .bucketing(let scheme): state.bucketing = scheme
            }
        }
    }

    /// Replaces the whole state of `feature` (for a state built by hand or read elsewhere).
    public func set(_ state: FeatureState) {
        update(state.feature) { $0 = state }
    }

    /// Forgets `feature`: checks answer off with reason `no_data` again.
    public func remove(_ feature: FeatureName) {
        states.withLock { states in
            states[feature] = nil
            gate.publishForTesting([feature: nil])
        }
    }

    /// The current state of `feature`, nil when it was never set.
    public func state(of feature: FeatureName) -> FeatureState? {
        states.withLock { $0[feature] }
    }

    private func update(_ feature: FeatureName, _ body: (inout FeatureState) -> Void) {
        precondition(feature.isValid, "TestFlags: '\(feature)' is not a valid feature name")
        states.withLock { states in
            var state = states[feature] ?? .absent(feature)
            body(&state)
            state.exists = true
            states[feature] = state
            // Under the lock: publications happen in the order of the changes.
            gate.publishForTesting([feature: state])
        }
    }

    private static func percent(_ value: Double) -> RolloutPercent {
        let scaled = value * 1000
        guard value.isFinite, abs(scaled - scaled.rounded()) < 1e-6, let percent = RolloutPercent(thousandths: Int(scaled.rounded())) else {
            preconditionFailure("TestFlags: \(value) is not a rollout percent (0 to 100, at most three decimals)")
        }
        return percent
    }
}

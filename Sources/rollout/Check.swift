import ArgumentParser
import Foundation
import RolloutGate
import RolloutRedis

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask the gate whether a feature is on for an actor, and why.",
        discussion: """
            With --actors-from FILE, one actor id per line in, `ID<TAB>true|false` per line out. With \
            --actors-from -, each line of standard input is answered as it arrives, through a live gate \
            (refresh and push invalidation included): watch a change propagate. With --snapshot-file \
            (or ROLLOUT_SNAPSHOT_FILE), a Redis that does not answer is replaced by that file, as a \
            service restarted during an outage would be: see what it would answer. The file is only read.
            """
    )

    @OptionGroup var options: ConnectionOptions
    @Argument(help: "The feature.") var feature: String
    @Option(help: "The actor id.") var actor: String?
    @Option(name: .customLong("actors-from"), help: ArgumentHelp("A file of actor ids, one per line, or - for standard input.", valueName: "file"))
    var actorsFrom: String?
    @Option(help: "The workspace id: the stickiness key becomes WORKSPACE:ACTOR.") var workspace: String?
    @Flag(name: .customLong("internal"), help: "The actor is internal (for internal_only features).") var isInternal = false
    @Option(name: .customLong("at"), help: ArgumentHelp("Answer as if rollout_percent were this percent (workspace overrides ignored).", valueName: "percent"))
    var atPercent: String?
    @OptionGroup var snapshotFile: SnapshotFileOption

    func validate() throws {
        _ = try featureName(feature)
        if (actor == nil) == (actorsFrom == nil) { throw ValidationError("Give exactly one of --actor ID and --actors-from FILE|-.") }
        if let atPercent { _ = try percent(atPercent, "--at") }
        if options.json && actorsFrom != nil { throw ValidationError("--json goes with --actor; --actors-from prints ID<TAB>true|false lines.") }
    }

    func run() async throws {
        let name = try featureName(feature)
        let previewPercent = try atPercent.map { try percent($0, "--at") }
        let url = try options.redisURL()
        var configuration = FeatureGate.Configuration()
        configuration.snapshotFile = snapshotFile.path
        configuration.writesSnapshotFile = false
        let gate = FeatureGate(redisURL: url, features: [name], configuration: configuration)
        let handle = gate.feature(name)
        let workspace = self.workspace
        let isInternal = self.isInternal
        let decide: @Sendable (String) -> Decision = { id in
            let who = Subject(id: id, workspace: workspace, isInternal: isInternal)
            return previewPercent.map { handle.decision(for: who, atPercent: $0) } ?? handle.decision(for: who)
        }
        // The gate's own error says why (refused, timed out, AUTH, TLS), with what to do.
        do {
            try await gate.load([name])
        } catch {
            // Answered from the snapshot file: say so, and answer as a restarted service would.
            guard case .snapshotFile = handle.decision(for: Subject(id: "")).freshness else { throw error }
            FileHandle.standardError.write(Data("Redis did not answer (\(error)); answering from the snapshot file \(configuration.snapshotFile ?? "").\n".utf8))
        }
        if let actor {
            try answer(decide(actor), feature: name, actor: actor, state: gate.state(of: name))
        } else if actorsFrom == "-" {
            try await answerStream(gate: gate, decide: decide)
        } else if let path = actorsFrom {
            // fread and write(1) block (a slow disk, a full pipe): on a thread of their own.
            let answered = await onOwnThread { () -> Result<Void, ValidationError> in
                Result { () throws(ValidationError) in
                    try Self.answerFile(path, handle: handle, atPercent: previewPercent, workspace: workspace, isInternal: isInternal)
                }
            }
            try answered.get()
        }
        // An invalid state answers every actor off, then exits 3, with --actor and
        // --actors-from alike.
        if case .failure(let invalid)? = gate.state(of: name) { throw CorruptStateFound(description: invalid.description) }
    }

    private func answer(
        _ decision: Decision, feature: FeatureName, actor: String, state: Result<FeatureState, InvalidFeatureState>?
    ) throws {
        let fallbackVariable: String? = if case .success(let valid)? = state { valid.rolloutPercentVariable } else { nil }
        if options.json {
            var document: [String: Any] = [
                "feature": feature.rawValue, "actor": actor, "workspace": workspace as Any, "internal": isInternal,
                "on": decision.isOn, "reason": decision.reason.code, "detail": decision.reason.description,
                "freshness": decision.freshness.code,
            ]
            if case .snapshotFile(let written) = decision.freshness { document["snapshot_written_at"] = written.description }
            if case .stale(let age) = decision.freshness { document["snapshot_age_seconds"] = age.components.seconds }
            if case .bucket(let scheme, let bucket, let threshold, let percent, let fromWorkspace) = decision.reason {
                document["bucket"] = bucket
                document["threshold"] = threshold
                document["scheme"] = scheme.rawValue
                document["percent"] = percent.description
                document["percent_source"] = fromWorkspace ? "workspace" : fallbackVariable == nil ? "rollout_percent" : "environment"
                if !fromWorkspace, let fallbackVariable { document["percent_variable"] = fallbackVariable }
            }
            if case .failure(let invalid)? = state { document["error"] = invalid.description }
            try printJSON(document)
        } else {
            var line = "\(feature) for \(Subject(id: actor, workspace: workspace).stickinessKey): \(decision)"
            if case .bucket(_, _, _, _, false) = decision.reason, let fallbackVariable {
                line += " [rollout_percent absent: the percent is \(fallbackVariable) from the environment]"
            }
            print(line)
        }
    }

    /// Answers a whole file in one pass, writing in large blocks.
    private static func answerFile(
        _ path: String, handle: FeatureHandle, atPercent previewPercent: RolloutPercent?, workspace: String?, isInternal: Bool
    ) throws(ValidationError) {
        guard let file = fopen(path, "rb") else {
            throw ValidationError("Cannot open --actors-from \(path): \(String(cString: strerror(errno))).")
        }
        defer { fclose(file) }
        var input = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
            if count == 0 { break }
            input.append(contentsOf: chunk[0..<count])
        }
        var output = [UInt8]()
        output.reserveCapacity(1 << 20)
        let yes = Array("\ttrue\n".utf8)
        let no = Array("\tfalse\n".utf8)
        input.withUnsafeBufferPointer { bytes in
            var start = 0
            while start < bytes.count {
                var end = start
                while end < bytes.count && bytes[end] != UInt8(ascii: "\n") { end += 1 }
                var last = end
                if last > start && bytes[last - 1] == UInt8(ascii: "\r") { last -= 1 }
                let line = UnsafeBufferPointer(rebasing: bytes[start..<last])
                let actor = Subject(id: String(decoding: line, as: UTF8.self), workspace: workspace, isInternal: isInternal)
                let isOn = previewPercent.map { handle.decision(for: actor, atPercent: $0).isOn } ?? handle.isEnabled(for: actor)
                output.append(contentsOf: line)
                output.append(contentsOf: isOn ? yes : no)
                if output.count >= 1 << 20 {
                    writeStandardOutput(output)
                    output.removeAll(keepingCapacity: true)
                }
                start = end + 1
            }
        }
        writeStandardOutput(output)
    }

    /// Answers each line of standard input as it arrives, through a running gate.
    private func answerStream(gate: FeatureGate, decide: @escaping (String) -> Decision) async throws {
        let service = Task { try await gate.run() }
        defer { service.cancel() }
        // Blocking reads stay off the cooperative pool: a dedicated thread reads stdin.
        let lines = AsyncStream<String> { continuation in
            let thread = Thread {
                while let line = readLine(strippingNewline: true) {
                    continuation.yield(line.hasSuffix("\r") ? String(line.dropLast()) : line)
                }
                continuation.finish()
            }
            thread.start()
        }
        for await line in lines {
            writeStandardOutput(Array("\(line)\t\(decide(line).isOn)\n".utf8))
        }
    }
}

/// Writes all of `bytes` to file descriptor 1 at once (unbuffered, so each answer is seen).
func writeStandardOutput(_ bytes: [UInt8]) {
    bytes.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count, let base = raw.baseAddress {
            let written = write(1, base + offset, raw.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                return  // stdout closed (e.g. `| head`): nothing more to say
            }
            offset += written
        }
    }
}

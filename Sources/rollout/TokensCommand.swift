import ArgumentParser
import Foundation
import RolloutServe

/// `--tokens-file` (or `ROLLOUT_TOKENS_FILE`).
struct TokensFileOption: ParsableArguments {
    @Option(
        name: .customLong("tokens-file"),
        help: ArgumentHelp("The tokens file of rollout serve (NAME SCOPES sha256:HEX per line). Default: $ROLLOUT_TOKENS_FILE.", valueName: "path"))
    var option: String?

    /// The path given, or the environment's; nil for none.
    var path: String? {
        option ?? ProcessInfo.processInfo.environment["ROLLOUT_TOKENS_FILE"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The path, required.
    func required() throws -> String {
        guard let path else { throw ValidationError("Give --tokens-file PATH (or set ROLLOUT_TOKENS_FILE).") }
        return path
    }
}

struct TokensCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokens",
        abstract: "The tokens rollout serve accepts: add, list, remove. Only each token's SHA-256 is stored.",
        subcommands: [Add.self, List.self, Remove.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a token: printed once, alone on the last line of standard output; its SHA-256 is appended to the file.")
        @Argument(help: "Who holds it (letters, digits, - _ .), written in audit lines as api:NAME.") var name: String
        @Option(help: ArgumentHelp("What it may do: evaluate, read, operate, alerts (comma-separated).", valueName: "scopes")) var scopes: String
        @OptionGroup var file: TokensFileOption

        func validate() throws {
            guard TokenFile.isValidName(name) else { throw ValidationError("\(name) is not a token name: letters, digits, -, _ and . only, at most 64.") }
            _ = try Scope.parseList(scopes)
            _ = try file.required()
        }

        func run() async throws {
            let path = try file.required()
            let scopes = try Scope.parseList(scopes)
            var tokens = FileManager.default.fileExists(atPath: path) ? try await TokenFile.read(path) : TokenFile()
            guard !tokens.entries.contains(where: { $0.name == name }) else {
                throw ValidationError("\(path) already has a token named \(name): remove it first (rollout tokens remove \(name)).")
            }
            let (token, entry) = TokenFile.newToken(name: name, scopes: scopes)
            tokens.entries.append(entry)
            try await tokens.write(to: path)
            print("token \(name) (\(scopes.sorted().map(\.rawValue).joined(separator: ","))) added to \(path); it is shown once:")
            print(token)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every token's name and scopes (never a token).")
        @OptionGroup var file: TokensFileOption

        func run() async throws {
            for entry in try await TokenFile.read(try file.required()).entries {
                print("\(entry.name)\t\(entry.scopes.sorted().map(\.rawValue).joined(separator: ","))")
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a token; a running server stops accepting it within 2 s.")
        @Argument(help: "The token's name.") var name: String
        @OptionGroup var file: TokensFileOption

        func run() async throws {
            let path = try file.required()
            var tokens = try await TokenFile.read(path)
            guard tokens.entries.contains(where: { $0.name == name }) else { throw ValidationError("\(path) has no token named \(name).") }
            tokens.entries.removeAll { $0.name == name }
            try await tokens.write(to: path)
            print("token \(name) removed from \(path)")
        }
    }
}

import Foundation
import NIOHTTP1
import RolloutGate
import RolloutRedis
@testable import RolloutServe
import RolloutTestSupport
import Testing

@Suite("Tokens: only hashes stored, compared in constant time")
struct TokenFileTests {
    @Test func aNewTokenIsFoundByItsHashOnlyAndTheFileRoundTrips() throws {
        let (token, entry) = TokenFile.newToken(name: "checkout-service", scopes: [.evaluate, .read])
        #expect(token.hasPrefix("rg_") && token.count == 46)
        #expect(!entry.line.contains(token))
        let file = TokenFile(entries: [entry, TokenFile.newToken(name: "ops", scopes: [.operate]).entry])
        let parsed = try TokenFile(parsing: file.text, path: "tokens")
        #expect(parsed == file)
        #expect(parsed.entry(for: token)?.name == "checkout-service")
        #expect(parsed.entry(for: token + "x") == nil)
        #expect(parsed.entry(for: "") == nil)
        #expect(file.text.contains("checkout-service evaluate,read sha256:\(entry.sha256)\n"))
    }

    @Test(arguments: [
        "app evaluate", "app evaluate sha256:1234", "app everything sha256:" + String(repeating: "a", count: 64),
        "app evaluate md5:" + String(repeating: "a", count: 64), "a/b evaluate sha256:" + String(repeating: "a", count: 64),
    ])
    func aLineThatBreaksTheFormatIsRefusedNamingIt(line: String) {
        #expect(throws: TokenFileError.self) { try TokenFile(parsing: "# comment\n\n" + line + "\n", path: "tokens") }
        do {
            _ = try TokenFile(parsing: "# comment\n\n" + line + "\n", path: "tokens")
        } catch {
            #expect(error.description.contains("tokens line 3"))
        }
    }

    @Test func aNameIsUsedOnce() {
        let line = "app evaluate sha256:" + String(repeating: "a", count: 64) + "\n"
        #expect(throws: TokenFileError.self) { try TokenFile(parsing: line + line, path: "tokens") }
    }
}

@Suite("rollout serve with tokens, and rollout tokens", .tags(.redis, .cli), .requiresOFREPClient, .serialized)
struct ServeTokensTests {
    @Test func everyRouteNeedsItsScopeAndARemovedTokenStopsWorking() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:checkout:rollout_percent", "100")
        let directory = try makeTemporaryDirectory("serve-tokens")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/tokens"
        let rollout = try rolloutBinary()
        func add(_ name: String, _ scopes: String) async throws -> String {
            let result = try await runCommand(rollout, ["tokens", "add", name, "--scopes", scopes, "--tokens-file", file])
            #expect(result.status == 0, "\(result.stderr)")
            return String(result.stdout.split(separator: "\n").last ?? "")
        }
        let app = try await add("app", "evaluate")
        let ops = try await add("ops", "read,operate")
        let text = try String(contentsOfFile: file, encoding: .utf8)
        #expect(text.contains("app evaluate sha256:") && !text.contains(app) && !text.contains(ops))
        let mode = try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? NSNumber
        #expect(mode?.intValue == 0o600)
        #expect(try await runCommand(rollout, ["tokens", "add", "app", "--scopes", "evaluate", "--tokens-file", file]).status == 2)
        let listed = try await runCommand(rollout, ["tokens", "list"], environment: ["ROLLOUT_TOKENS_FILE": file])
        #expect(listed.stdout == "app\tevaluate\nops\tread,operate\n")

        let serve = try Serve(server, directory: directory, arguments: ["--tokens-file", file])
        #expect(await ready(serve))
        let flag = serve.base + "/ofrep/v1/evaluate/flags/checkout"
        let anonymous = try await call(flag, body: context("u1"))
        #expect(anonymous.status == 401 && anonymous.body.isEmpty)
        #expect(try await call(flag, body: context("u1"), headers: [("Authorization", "Bearer rg_wrong")]).status == 401)
        let forbidden = try await call(flag, body: context("u1"), headers: [("Authorization", "Bearer \(ops)")])
        #expect(forbidden.status == 403 && forbidden.body.isEmpty)
        #expect(try await call(flag, body: context("u1"), headers: [("Authorization", "Bearer \(app)")]).status == 200)
        #expect(try await call(flag, body: context("u1"), headers: [("X-API-Key", app)]).status == 200)
        #expect(try await call(serve.base + "/ofrep/v1/evaluate/flags", body: context("u1"), headers: [("X-API-Key", ops)]).status == 403)
        #expect(try await call(serve.base + "/healthz", method: .GET).status == 200)
        #expect(try await call(serve.base + "/metrics", method: .GET, headers: [("X-API-Key", app)]).status == 403)
        #expect(try await call(serve.base + "/metrics", method: .GET).status == 401)
        #expect(try await call(serve.base + "/metrics", method: .GET, headers: [("X-API-Key", ops)]).status == 200)

        // The SDK with a wrong token gets an error, so its caller's default, never a guess.
        if let python = ofrepPython() {
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Clients/ofrep_client.py").path
            let one = directory + "/one.txt"
            try "u1\n".write(toFile: one, atomically: true, encoding: .utf8)
            let denied = try await runCommand(python, [script, serve.base, "checkout", one, "rg_wrong"])
            #expect(denied.stdout.hasPrefix("u1\tfalse\t") && denied.stdout.contains("GENERAL"), "\(denied.stdout) \(denied.stderr)")
            let allowed = try await runCommand(python, [script, serve.base, "checkout", one, app])
            #expect(allowed.stdout == "u1\ttrue\tSTATIC\t-\n", "\(allowed.stdout) \(allowed.stderr)")
        }

        // Removed from the file: refused within the re-read interval, without a restart.
        #expect(try await runCommand(rollout, ["tokens", "remove", "app", "--tokens-file", file]).status == 0)
        #expect(await eventually(within: .seconds(30)) { (try? await call(flag, body: context("u1"), headers: [("X-API-Key", app)]))?.status == 401 })
    }
}

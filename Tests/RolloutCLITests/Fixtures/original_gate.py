#!/usr/bin/env python3
"""A re-implementation of the original Python gate's rule (the system rollout-gate replaces),
written from its description in docs/migrating.md and docs/bucketing.md (v1), for
OriginalGateComparisonTests: it answers the same actors as `rollout check` against the same
redis-server, and the two must never disagree.

The original gate, as it behaves:
- it reads only flags:<feature>:rollout_percent (GET; a 5 s local cache, here one read per
  process), and parses it with Python's int(): a value int() cannot read ("37.5", "10.0") is 0;
- when the key is absent it reads FLAGS_<FEATURE>_ROLLOUT_PERCENT from the environment
  (<FEATURE> = the name upper-cased, nothing else), else 0;
- the stickiness key is "<workspace>:<actor>" with a workspace, else "<actor>", where an empty
  actor id is "anon";
- bucket = int(sha256(key).hexdigest()[:8], 16) % 100 + 1; on iff bucket <= percent;
- it ignores enabled, internal_only, allow/deny, workspaces' own percents and guards.

Standard library only; Redis through a raw socket (RESP).

usage: original_gate.py HOST PORT FEATURE [WORKSPACE] < ids > answers
Reads one actor id per line (UTF-8; a trailing CR is dropped) and writes `ID<TAB>true|false`
per line, the format of `rollout check --actors-from`.
"""
import hashlib
import os
import socket
import sys


def redis_get(host, port, key):
    """GET key over RESP; None when absent."""
    data = key.encode()
    request = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection((host, port), timeout=5) as connection:
        connection.sendall(request)
        reply = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
            if reply.startswith(b"$-1\r\n"):
                return None
            if reply.startswith(b"$"):
                header, _, rest = reply.partition(b"\r\n")
                length = int(header[1:])
                if len(rest) >= length + 2:
                    return rest[:length].decode()
            elif reply.startswith(b"-"):
                raise RuntimeError(reply.decode(errors="replace").strip())
    raise RuntimeError("Redis closed the connection before answering")


class MinimalGate:
    def __init__(self, host, port, feature):
        self.host = host
        self.port = port
        self.feature = feature
        self._percent = None  # the original's 5 s cache: one read per process here

    def rollout_percent(self):
        if self._percent is None:
            value = redis_get(self.host, self.port, "flags:%s:rollout_percent" % self.feature)
            if value is None:
                value = os.environ.get("FLAGS_%s_ROLLOUT_PERCENT" % self.feature.upper(), "0")
            try:
                self._percent = int(value)
            except ValueError:
                self._percent = 0
        return self._percent

    def is_enabled(self, actor_id, workspace_id=None):
        actor = actor_id or "anon"
        key = "%s:%s" % (workspace_id, actor) if workspace_id else actor
        bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100 + 1
        return bucket <= self.rollout_percent()


def main():
    host, port, feature = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    workspace = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
    gate = MinimalGate(host, port, feature)
    out = []
    for raw in sys.stdin.buffer.read().split(b"\n"):
        out.append(raw)
    if out and out[-1] == b"":
        out.pop()  # the file's last newline ends the last line; it starts no new one
    answers = []
    for raw in out:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        actor = raw.decode("utf-8")
        answers.append("%s\t%s\n" % (actor, "true" if gate.is_enabled(actor, workspace) else "false"))
    sys.stdout.write("".join(answers))


if __name__ == "__main__":
    main()

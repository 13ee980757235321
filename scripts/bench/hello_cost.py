# The cost of the HELLO 2 that every connect sends (docs/operations.md, "Why not Redis
# Cluster"): the time of one connect (TCP connect, handshake, a first PING) with and without
# HELLO, without a password (HELLO is then a round trip of its own) and with one (HELLO rides
# in AUTH's round trip). Raw sockets, so only the protocol is measured; the four cases run in
# turns, so a change in the machine's load hits them alike. Creates the ACL user bench.
#   python3 scripts/bench/hello_cost.py PORT [CONNECTS]     (BENCH_ONLY=hello scripts/bench.sh)
import socket, statistics, sys, time
port = int(sys.argv[1]); n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
def resp(*args):
    return b"".join([b"*%d\r\n" % len(args)] + [b"$%d\r\n%s\r\n" % (len(a), a) for a in args])
def read_replies(s, count, buf=b""):
    # counts top-level replies in simple RESP2 (status, error, bulk, flat arrays of bulks)
    while True:
        i, got = 0, 0
        try:
            while got < count:
                t = buf[i:i+1]
                end = buf.index(b"\r\n", i)
                if t in (b"+", b"-", b":"): i = end + 2
                elif t == b"$": i = end + 2 + int(buf[i+1:end]) + 2
                elif t == b"*":
                    k = int(buf[i+1:end]); i = end + 2
                    for _ in range(k):
                        e = buf.index(b"\r\n", i)
                        if buf[i:i+1] == b"$": i = e + 2 + int(buf[i+1:e]) + 2
                        else: i = e + 2
                if i > len(buf): raise ValueError
                got += 1
            return
        except ValueError:
            buf += s.recv(65536)
def connect(handshake):
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if handshake:
        s.sendall(b"".join(handshake)); read_replies(s, len(handshake))
    s.sendall(resp(b"PING")); read_replies(s, 1)
    s.close()
cases = {
    "no password, no HELLO (before)": [],
    "no password, HELLO 2 (after)": [resp(b"HELLO", b"2")],
    "AUTH, no HELLO (before)": [resp(b"AUTH", b"bench", b"bench-pass")],
    "AUTH + HELLO 2 in one round trip (after)": [resp(b"AUTH", b"bench", b"bench-pass"), resp(b"HELLO", b"2")],
}
def setup():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(resp(b"ACL", b"SETUSER", b"bench", b"on", b">bench-pass", b"+ping")); read_replies(s, 1)
    s.close()
setup()
times = {k: [] for k in cases}
for _ in range(n):
    for k, h in cases.items():
        t = time.perf_counter_ns(); connect(h); times[k].append((time.perf_counter_ns() - t) / 1000)
for k, v in times.items():
    print(f"{k:44s} median {statistics.median(v):6.1f} us  p90 {sorted(v)[int(len(v)*0.9)]:6.1f} us")

# Shared by scripts/test.sh and scripts/quickstart.sh: installing what is missing, finding
# free loopback ports, and stopping what a script started. Source it; do not run it.

# Installs the Debian packages given that are not installed yet (apt-get update first, once).
ensure_packages() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  echo "==> installing ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Makes the virtual environment $1 (with Debian's python3) holding the PyPI packages that
# follow, unless it already has them.
ensure_python_venv() {
  local venv="$1"
  shift
  if [ -x "$venv/bin/python" ] && "$venv/bin/pip" show -q "$@" >/dev/null 2>&1; then
    return 0
  fi
  echo "==> installing $* into $venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$@"
}

# Checks that the Swift toolchain is on PATH (it is not a Debian package).
ensure_swift() {
  if ! command -v swift >/dev/null 2>&1; then
    if [ -x /opt/swift/usr/bin/swift ]; then
      export PATH="/opt/swift/usr/bin:$PATH"
    else
      echo "error: swift is not on PATH; install Swift 6.3 from swift.org (see README.md)" >&2
      exit 1
    fi
  fi
}

# Prints a TCP port on 127.0.0.1 that nothing listens on.
free_port() {
  local port
  for _ in $(seq 1 200); do
    # Below Linux's ephemeral range (32768 and up), where outgoing connections take ports.
    port=$(( (RANDOM % 12000) + 20000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "error: no free loopback port found" >&2
  return 1
}

# Waits until something answers PING on 127.0.0.1:$1 (at most 10 s).
wait_for_redis() {
  for _ in $(seq 1 100); do
    if redis-cli -h 127.0.0.1 -p "$1" PING >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "error: redis-server did not answer on port $1" >&2
  return 1
}

# Starts a scratch directory ($work) and a redis-server from redis/redis.conf on a free
# loopback port ($port, pid $redis_pid), both removed on exit, also on failure or Ctrl-C.
start_local_redis() {
  work=$(mktemp -d)
  redis_pid=""
  trap stop_local_redis EXIT INT TERM
  port=$(free_port)
  redis-server redis/redis.conf --port "$port" --dir "$work" --logfile "$work/redis.log" &
  redis_pid=$!
  wait_for_redis "$port"
}

stop_local_redis() {
  if [ -n "${redis_pid:-}" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  rm -rf "${work:-}"
}

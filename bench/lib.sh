# Shared by the bench/*/run.sh scripts (sourced, from the repository root): the release build of
# the server, the Python environment of the drivers, and starting a server.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quiver/target}"

# Installs the system packages and builds the release server.
bench_build() {
  scripts/install-deps
  cargo build --release -p quiver-server
}

# Sets `venv` to the benchmarks' Python environment, with bench/requirements.txt installed.
bench_venv() {
  venv="$CARGO_TARGET_DIR/bench-venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r bench/requirements.txt
}

# Starts the release server on 127.0.0.1:PORT with data dir DIR (log in DIR.log); sets
# `quiver_pid` and returns once the port answers.
bench_start_quiver() {
  local port="$1" dir="$2"
  "$CARGO_TARGET_DIR/release/quiver" serve --listen "127.0.0.1:$port" --data-dir "$dir" 2>>"$dir.log" &
  quiver_pid=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return
    sleep 0.1
  done
  echo "quiver did not start" >&2
  exit 1
}

# Sets `work` to a fresh scratch directory; on exit the server started by bench_start_quiver is
# stopped and the directory removed.
bench_workdir() {
  work=$(mktemp -d "/tmp/quiver-$1.XXXXXX")
  trap 'if [ -n "${quiver_pid:-}" ]; then kill "$quiver_pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
}

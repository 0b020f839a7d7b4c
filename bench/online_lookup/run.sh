#!/usr/bin/env bash
# bench/online_lookup: one online feature group of KEYS (default 1,000,000) keys x 50 doubles in
# Quiver, the same rows in PostgreSQL 15 (a table with a primary key) and in Redis (one hash per
# key); single-key lookups by prepared statement at 1, 8 and 32 connections and 100-key batch
# lookups, all from one Rust client (tokio-postgres, redis-rs); Quiver and PostgreSQL are measured
# twice per phase, in A B B A order. Release builds; not run in CI.
# Usage: bench/online_lookup/run.sh [KEYS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
keys="${1:-1000000}"
seconds="${2:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quiver/target}"
scripts/install-deps
dpkg -s postgresql-15 >/dev/null 2>&1 && command -v redis-server >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 redis-server >/dev/null
}
cargo build --release -p quiver-server
cargo build --release --manifest-path bench/online_lookup/Cargo.toml

work=$(mktemp -d /tmp/quiver-bench.XXXXXX)
chmod 755 "$work"
cleanup() {
  [ -n "${quiver_pid:-}" ] && kill "$quiver_pid" 2>/dev/null || true
  [ -n "${redis_pid:-}" ] && kill "$redis_pid" 2>/dev/null || true
  runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/pg" && chown postgres "$work/pg"
runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D "$work/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pg" \
  -o "-p 5497 -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=100" -l "$work/pg/server.log" start >/dev/null

redis-server --port 5496 --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
redis_pid=$!

# The online store holds the data set in memory, as Redis holds all of it and PostgreSQL serves
# it from shared buffers and the OS page cache: a row cache of 768 MiB holds every row of a
# million, so a lookup skips the block search; the block cache keeps its default size (the
# pinned index and filter blocks, about 1% of the data, and the blocks the load and the warm-up
# read).
"$CARGO_TARGET_DIR/release/quiver" serve --listen 127.0.0.1:5498 --data-dir "$work/quiver" \
  --online-row-cache-mb 768 2>"$work/quiver.log" &
quiver_pid=$!
sleep 1

"$CARGO_TARGET_DIR/release/online-lookup-bench" --quiver-port 5498 --postgres-port 5497 --redis-port 5496 \
  --keys "$keys" --seconds "$seconds"

# Resident memory after the run. PostgreSQL's processes share their buffers, so it is the sum of
# their proportional set sizes.
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
pg_pss=0
for pid in $(pgrep -u postgres -f "postgres|postgres:"); do
  pss=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
  pg_pss=$((pg_pss + ${pss:-0}))
done
echo
echo "memory after load and lookups (MiB): quiver RSS $(( $(rss_kb "$quiver_pid") / 1024 )), postgresql PSS $((pg_pss / 1024)), redis RSS $(( $(rss_kb "$redis_pid") / 1024 ))"

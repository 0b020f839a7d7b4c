#!/usr/bin/env bash
# bench/ingest: load the same CSV (default 5,000,000 rows x 12 columns) by COPY into Quiver and
# PostgreSQL 15, and into DuckDB; then run one scan-aggregate on each. Release build; not run in CI.
# Usage: bench/ingest/run.sh [ROWS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rows="${1:-5000000}"
source bench/lib.sh
dpkg -s postgresql-15 >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null; }
bench_build
bench_venv

work=$(mktemp -d /tmp/quiver-bench.XXXXXX)
chmod 755 "$work"
cleanup() {
  [ -n "${quiver_pid:-}" ] && kill "$quiver_pid" 2>/dev/null || true
  runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL 15 on loopback, as the postgres user (it refuses to run as root).
mkdir -p "$work/pg" && chown postgres "$work/pg"
runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D "$work/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pg" -o "-p 5497 -k $work/pg -c listen_addresses=127.0.0.1" -l "$work/pg/server.log" start >/dev/null

"$CARGO_TARGET_DIR/release/quiver" serve --listen 127.0.0.1:5498 --data-dir "$work/quiver" 2>"$work/quiver.log" &
quiver_pid=$!

PYTHONPATH=bench "$venv/bin/python" bench/ingest/ingest.py --rows "$rows" --work "$work" --postgres-port 5497 --quiver-port 5498

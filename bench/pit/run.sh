#!/usr/bin/env bash
# bench/pit: ASOF JOIN in Quiver vs DuckDB (2 threads each) on two cases: DuckDB's published one,
# a right side of 100,000 timestamps x 50 keys (5M rows) probed by 5M rows; and a feature store's,
# a spine of SPINE rows joined to three feature groups of GROUP_ROWS rows x 10 doubles (100,000
# entities; chained ASOF joins; in Quiver real feature groups). Same generated data in both,
# same answer (count, matched count and sum of matched values), median of 5 runs, and the peak
# memory of the query phase (Quiver: the server restarted after the load; DuckDB: a fresh process
# on the loaded database file). Release build; not run in CI.
# Usage: bench/pit/run.sh [TIMESTAMPS] [KEYS] [PROBES] [SPINE] [GROUP_ROWS]
set -euo pipefail
cd "$(dirname "$0")/../.."
timestamps="${1:-100000}"
keys="${2:-50}"
probes="${3:-5000000}"
spine="${4:-1000000}"
group_rows="${5:-10000000}"
source bench/lib.sh
bench_build
bench_venv

bench_workdir pit

start_quiver() {
  # Two cores' worth of query partitions, as DuckDB gets two threads.
  bench_start_quiver 5495 "$work/quiver"
}

py() {
  "$venv/bin/python" bench/pit/pit.py --timestamps "$timestamps" --keys "$keys" --probes "$probes" \
    --spine "$spine" --group-rows "$group_rows" "$@"
}

start_quiver
py load-quiver --port 5495
py load-quiver-fs --port 5495
kill "$quiver_pid"; wait "$quiver_pid" 2>/dev/null || true
start_quiver
quiver_result=$(py query-quiver --port 5495)
quiver_peak_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$quiver_pid/status")
kill "$quiver_pid"; wait "$quiver_pid" 2>/dev/null || true
start_quiver
quiver_fs_result=$(py query-quiver-fs --port 5495)
quiver_fs_peak_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$quiver_pid/status")

py load-duckdb --database "$work/pit.duckdb"
duckdb_result=$(py query-duckdb --database "$work/pit.duckdb")
py load-duckdb-fs --database "$work/fs.duckdb"
duckdb_fs_result=$(py query-duckdb-fs --database "$work/fs.duckdb")

echo "case 1: right side $timestamps timestamps x $keys keys, $probes probes"
echo "quiver: $quiver_result, peak RSS $((quiver_peak_kb / 1024)) MiB (server, query phase)"
echo "duckdb: $duckdb_result"
py compare --quiver "$quiver_result" --duckdb "$duckdb_result"
echo
echo "case 2: spine of $spine rows over three feature groups of $group_rows rows x 10 doubles"
echo "quiver: $quiver_fs_result, peak RSS $((quiver_fs_peak_kb / 1024)) MiB (server, query phase)"
echo "duckdb: $duckdb_fs_result"
py compare --quiver "$quiver_fs_result" --duckdb "$duckdb_fs_result"

#!/usr/bin/env bash
# bench/cluster: three Quiver nodes on this machine (a shared offline store, the catalog and the
# online store replicated with Raft) against one standalone node, on the same data: write
# throughput by COPY into an online feature group, single-key lookup QPS on each node (pgbench,
# prepared statements), and failover time (leader killed to the first accepted write, median of
# five). Release build; not run in CI.
# Usage: bench/cluster/run.sh [ROWS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rows="${1:-1000000}"
seconds="${2:-10}"
source bench/lib.sh
# pgbench comes with the PostgreSQL server package.
command -v pgbench >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null; }
bench_build
bench_venv
bench_workdir cluster
# The nodes are started and killed by the driver, which stops them at its end.
PYTHONPATH=bench "$venv/bin/python" bench/cluster/cluster.py --quiver "$CARGO_TARGET_DIR/release/quiver" --work "$work" \
  --rows "$rows" --seconds "$seconds"

#!/usr/bin/env bash
# bench/export: training dataset export of ROWS x 50 doubles. Quiver (CREATE TRAINING DATASET from a
# feature group, reading its offline store) against each format's usual Python writer with the
# same data already in memory: parquet vs pyarrow (zstd both), npy vs numpy.save, tfrecords vs
# TensorFlow's TFRecordWriter (row by row in Python; timed on TF_ROWS rows and scaled). Median of 3.
# Release build; not run in CI.
# Usage: bench/export/run.sh [ROWS] [TF_ROWS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rows="${1:-10000000}"
tf_rows="${2:-200000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quiver/target}"
scripts/install-deps
cargo build --release -p quiver-server
venv="$CARGO_TARGET_DIR/bench-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r bench/requirements.txt

work=$(mktemp -d /tmp/quiver-export.XXXXXX)
cleanup() {
  [ -n "${quiver_pid:-}" ] && kill "$quiver_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$CARGO_TARGET_DIR/release/quiver" serve --listen 127.0.0.1:5496 --data-dir "$work/quiver" 2>>"$work/quiver.log" &
quiver_pid=$!
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/5496) 2>/dev/null && break
  sleep 0.1
done
py() { "$venv/bin/python" bench/export/export.py --rows "$rows" --tf-rows "$tf_rows" --work "$work" "$@"; }
py load-quiver
py run

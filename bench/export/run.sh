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
source bench/lib.sh
bench_build
bench_venv

bench_workdir export
bench_start_quiver 5496 "$work/quiver"
py() { "$venv/bin/python" bench/export/export.py --rows "$rows" --tf-rows "$tf_rows" --work "$work" "$@"; }
py load-quiver
py run

#!/usr/bin/env bash
# bench/models: train_model against scikit-learn on the same training dataset files, and serve()
# latency. ROWS rows x 50 features in a feature group (online, for serving); a parquet training
# dataset split 80/20; logistic regression and a random forest (TREES trees of depth 10) trained
# by Quiver and by scikit-learn (2 jobs, as the machine has 2 cores) on the dataset's own train
# files, both scored by ROC AUC on its test files, both timed from reading the files to the test
# score (Quiver: the whole train_model statement, registration included). Then serve('m', key) by
# prepared statement at 1 and 8 connections, sent by pgbench for 10 s each on random keys:
# serves per second, p50 and p99. Release build; not run in CI.
# Usage: bench/models/run.sh [ROWS] [TREES]
set -euo pipefail
cd "$(dirname "$0")/../.."
rows="${1:-1000000}"
trees="${2:-50}"
source bench/lib.sh
# pgbench comes with the PostgreSQL server package.
command -v pgbench >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null; }
bench_build
bench_venv

bench_workdir models
bench_start_quiver 5495 "$work/quiver"
"$venv/bin/python" bench/models/models.py --rows "$rows" --trees "$trees" --port 5495 --work "$work"

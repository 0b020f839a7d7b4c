"""bench/models driver; see run.sh.

Feature f of row i is ((i * (7919 + f)) % 10007) / 10007; the label is 1 when a weighted sum of the
features plus a hashed noise term is above its middle, so neither model is perfect.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

COLUMNS = 50
SERVE_SECONDS = 10


def connect(args):
    import psycopg
    return psycopg.connect(host="127.0.0.1", port=args.port, user="quiver", dbname="quiver", autocommit=True)


def load(args):
    features = ", ".join(f"CAST((value * {7919 + f}) % 10007 AS DOUBLE PRECISION) / 10007 AS f{f}" for f in range(COLUMNS))
    score = " + ".join(f"{(f % 5) - 2} * CAST((value * {7919 + f}) % 10007 AS DOUBLE PRECISION) / 10007" for f in range(COLUMNS))
    noise = "CAST((value * 2654435761) % 1000 AS DOUBLE PRECISION) / 250 - 2"
    with connect(args) as conn:
        columns = ", ".join(f"f{f} DOUBLE PRECISION" for f in range(COLUMNS))
        conn.execute(f"CREATE FEATURE GROUP wide (id BIGINT, {columns}, y BIGINT, PRIMARY KEY (id)) WITH (online = true)")
        step = 500_000
        for start in range(0, args.rows, step):
            n = min(step, args.rows - start)
            conn.execute(f"INSERT INTO wide SELECT value AS id, {features}, CASE WHEN {score} + {noise} > 0 THEN 1 ELSE 0 END AS y "
                         f"FROM generate_series({start}, {start + n - 1})")
        conn.execute("CREATE FEATURE VIEW wide_view AS SELECT * FROM wide WITH (label = 'y')")
        conn.execute("CREATE TRAINING DATASET wide_td FROM FEATURE VIEW wide_view FORMAT parquet "
                     "SPLIT (train = 0.8, test = 0.2) SEED 1")
        location = conn.execute("SELECT location FROM quiver.training_datasets WHERE name = 'wide_td'").fetchone()[0]
    return location.removeprefix("file://")


def quiver_train(args, algorithm, params):
    with connect(args) as conn:
        start = time.perf_counter()
        row = conn.execute(
            f"SELECT version, metrics FROM train_model('m', 'wide_td', 1, '{algorithm}', '{json.dumps(params)}')"
        ).fetchone()
        return time.perf_counter() - start, json.loads(row[1])["roc_auc"], row[0]


def read_split(location, split):
    import numpy
    import pyarrow.parquet
    table = pyarrow.parquet.read_table(sorted(glob.glob(f"{location}/{split}/*.parquet")))
    x = numpy.column_stack([table.column(f"f{f}").to_numpy() for f in range(COLUMNS)])
    return x, table.column("y").to_numpy()


def sklearn_train(location, model):
    """Timed as train_model is: reading both splits' files, fitting, scoring the test split."""
    from sklearn.metrics import roc_auc_score
    start = time.perf_counter()
    x, y = read_split(location, "train")
    test_x, test_y = read_split(location, "test")
    model.fit(x, y)
    auc = roc_auc_score(test_y, model.predict_proba(test_x)[:, 1])
    return time.perf_counter() - start, auc


def serve_latency(args, version, connections):
    """pgbench (C, one thread per connection) sends prepared serve calls on random keys for
    SERVE_SECONDS; returns serves per second and p50, p99 in ms from its per-request log. A
    Python client at 8 connections measured its own interpreter as much as the server."""
    script = os.path.join(args.work, "serve.sql")
    with open(script, "w") as f:
        f.write(f"\\set id random(0, {args.rows - 1})\nSELECT prediction FROM serve('m_{version}', :id);\n")
    logs = tempfile.mkdtemp(dir=args.work)
    out = subprocess.run(
        ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(args.port), "-U", "quiver", "-M", "prepared",
         "-c", str(connections), "-j", str(connections), "-T", str(SERVE_SECONDS), "-l", "-f", script, "quiver"],
        cwd=logs, check=True, capture_output=True, text=True,
    ).stdout
    latencies = []
    for name in glob.glob(f"{logs}/pgbench_log.*"):
        with open(name) as f:
            latencies.extend(int(line.split()[2]) for line in f)
    shutil.rmtree(logs)
    latencies.sort()
    per_second = float(re.search(r"tps = ([0-9.]+)", out).group(1))
    return per_second, latencies[len(latencies) // 2] / 1000, latencies[int(len(latencies) * 0.99)] / 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--trees", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    location = load(args)
    print(f"rows: {args.rows} x {COLUMNS} features, dataset at {location}")
    exclude = ["id"]
    cases = [
        ("logistic_regression", {"exclude": exclude, "max_iter": 1000}, LogisticRegression(penalty=None, max_iter=1000)),
        ("random_forest_classifier", {"exclude": exclude, "n_trees": args.trees, "max_depth": 10, "seed": 1},
         RandomForestClassifier(n_estimators=args.trees, max_depth=10, n_jobs=2, random_state=1)),
    ]
    version = None
    print(f"{'algorithm':26} {'quiver s':>9} {'sklearn s':>9} {'ratio':>6} {'quiver AUC':>10} {'sklearn AUC':>11}")
    for algorithm, params, reference in cases:
        q_seconds, q_auc, v = quiver_train(args, algorithm, params)
        version = version or v
        s_seconds, s_auc = sklearn_train(location, reference)
        print(f"{algorithm:26} {q_seconds:9.2f} {s_seconds:9.2f} {q_seconds / s_seconds:6.2f} {q_auc:10.4f} {s_auc:11.4f}")
    for connections in (1, 8):
        per_second, p50, p99 = serve_latency(args, version, connections)
        print(f"serve at {connections} connection(s): {per_second:,.0f} serves/s, p50 {p50:.3f} ms, p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()

"""Ingest and scan-aggregate: Quiver vs PostgreSQL 15 vs DuckDB on the same CSV.

The CSV has a bigint key, a timestamp and 10 doubles. Quiver and PostgreSQL load it by COPY through
the same client (psycopg, streaming the file); DuckDB reads it with read_csv. The query is one
GROUP BY key % 1000 over all rows.
"""

import argparse
import os
import time

import duckdb
import psycopg

from csv_load import copy_csv, make_csv

COLUMNS = ["key", "ts"] + [f"f{i}" for i in range(10)]
QUERY = "SELECT key % 1000 AS bucket, count(*) AS n, avg(f0) AS a0, sum(f9) AS s9 FROM ingest GROUP BY key % 1000"


def timed_query(run) -> float:
    """The best of three runs of the query."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        rows = run()
        best = min(best, time.perf_counter() - started)
        assert len(rows) == 1000, f"expected 1000 groups, got {len(rows)}"
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--postgres-port", type=int, required=True)
    parser.add_argument("--quiver-port", type=int, required=True)
    args = parser.parse_args()

    csv_path = os.path.join(args.work, "ingest.csv")
    make_csv(csv_path, args.rows)
    print(f"data: {args.rows:,} rows x {len(COLUMNS)} columns, {os.path.getsize(csv_path) / 1e6:.0f} MB of CSV")

    doubles = ", ".join(f"f{i} DOUBLE PRECISION" for i in range(10))
    results = {}

    with psycopg.connect(host="127.0.0.1", port=args.quiver_port, user="quiver", dbname="quiver", autocommit=True) as conn:
        conn.execute(f"CREATE FEATURE GROUP ingest (key BIGINT, ts TIMESTAMP, {doubles}, PRIMARY KEY (key), EVENT TIME ts)")
        load = copy_csv(conn, "ingest", csv_path)
        count = conn.execute("SELECT count(*) FROM ingest").fetchone()[0]
        assert count == args.rows, f"quiver has {count} rows"
        query = timed_query(lambda: conn.execute(QUERY).fetchall())
        results["quiver"] = (load, query)

    with psycopg.connect(host="127.0.0.1", port=args.postgres_port, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f"CREATE TABLE ingest (key BIGINT, ts TIMESTAMP, {doubles})")
        load = copy_csv(conn, "ingest", csv_path)
        conn.execute("VACUUM ANALYZE ingest")
        query = timed_query(lambda: conn.execute(QUERY).fetchall())
        results["postgresql"] = (load, query)

    duck = duckdb.connect(os.path.join(args.work, "bench.duckdb"))
    duck.execute("SET threads = 2")
    started = time.perf_counter()
    duck.execute(f"CREATE TABLE ingest AS SELECT * FROM read_csv('{csv_path}', header = true)")
    load = time.perf_counter() - started
    query = timed_query(lambda: duck.execute(QUERY).fetchall())
    results["duckdb"] = (load, query)

    print(f"{'system':<12}{'load s':>10}{'rows/s':>14}{'query s':>10}")
    for name, (load, query) in results.items():
        print(f"{name:<12}{load:>10.2f}{args.rows / load:>14,.0f}{query:>10.3f}")
    q_load, q_query = results["quiver"]
    print(f"ingest rows/s, quiver / postgresql: {results['postgresql'][0] / q_load:.2f}x (target >= 1)")
    print(f"ingest rows/s, quiver / duckdb:     {results['duckdb'][0] / q_load:.2f}x")
    print(f"aggregate time, quiver / duckdb:    {q_query / results['duckdb'][1]:.2f}x (target <= 1.5)")
    print(f"aggregate time, quiver / postgresql: {q_query / results['postgresql'][1]:.2f}x")


if __name__ == "__main__":
    main()

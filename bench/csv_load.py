"""The CSV the ingest and cluster benchmarks load (a bigint key, a timestamp, 10 doubles), made
by DuckDB, and its load by COPY through psycopg, streaming the file."""

import time

import duckdb


def make_csv(path: str, rows: int) -> None:
    doubles = ", ".join(f"random() AS f{i}" for i in range(10))
    duckdb.sql(
        f"COPY (SELECT i AS key, TIMESTAMP '2026-01-01' + to_seconds(i) AS ts, {doubles} "
        f"FROM range({rows}) t(i)) TO '{path}' (HEADER, DELIMITER ',')"
    )


def copy_csv(conn, table: str, path: str) -> float:
    """Streams the file into `table` by COPY; returns the seconds it took."""
    started = time.perf_counter()
    with conn.cursor() as cur:
        with cur.copy(f"COPY {table} FROM STDIN WITH (FORMAT csv, HEADER)") as copy:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    copy.write(chunk)
    return time.perf_counter() - started

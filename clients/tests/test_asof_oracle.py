"""ASOF JOIN against an oracle: DuckDB's ASOF LEFT JOIN on the same random data (no exact ties,
which the two systems break differently: Quiver by commit, DuckDB arbitrarily)."""

import datetime
import random

import duckdb
import psycopg
import pytest

EPOCH = datetime.datetime(2026, 1, 1)


def random_rows(rng, count, keys, seconds, used):
    """(k1, k2, ts, value) with distinct (k1, ts); about 2% of keys NULL."""
    rows = []
    while len(rows) < count:
        k1 = rng.randrange(keys) if rng.random() > 0.02 else None
        k2 = rng.choice(["a", "b", "c"])
        ts = EPOCH + datetime.timedelta(seconds=rng.randrange(seconds))
        if (k1, ts) in used:
            continue
        used.add((k1, ts))
        rows.append((k1, k2, ts, rng.random()))
    return rows


@pytest.mark.parametrize("condition", [">=", ">", "<=", "<"])
@pytest.mark.parametrize("keys", [["k1"], ["k1", "k2"]], ids=["one key", "composite key"])
def test_asof_join_matches_duckdb(quiver, condition, keys):
    on = " AND ".join(f"l.{k} = r.{k}" for k in keys)
    rng = random.Random(7)
    used = set()
    # Left and right times never coincide, except on purpose for > and < below.
    right = random_rows(rng, 3000, 40, 500_000, used)
    left = random_rows(rng, 2000, 45, 500_000, used)
    # A few left rows at exactly a right row's time, where >= and > (<= and <) differ.
    left += [(k1, k2, ts, 0.5) for (k1, k2, ts, _) in right[:50] if k1 is not None]

    with psycopg.connect(host="127.0.0.1", port=quiver, user="quiver", dbname="quiver", autocommit=True) as conn:
        conn.execute("CREATE TABLE l (k1 BIGINT, k2 TEXT, ts TIMESTAMP, x DOUBLE PRECISION)")
        conn.execute("CREATE TABLE r (k1 BIGINT, k2 TEXT, ts TIMESTAMP, v DOUBLE PRECISION)")
        for table, rows in (("l", left), ("r", right)):
            with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        quiver_rows = conn.execute(
            f"SELECT l.k1, l.k2, l.ts, l.x, r.ts, r.v FROM l ASOF JOIN r "
            f"MATCH_CONDITION (l.ts {condition} r.ts) ON {on}"
        ).fetchall()

    duck = duckdb.connect()
    duck.execute("CREATE TABLE l (k1 BIGINT, k2 TEXT, ts TIMESTAMP, x DOUBLE)")
    duck.execute("CREATE TABLE r (k1 BIGINT, k2 TEXT, ts TIMESTAMP, v DOUBLE)")
    duck.executemany("INSERT INTO l VALUES (?, ?, ?, ?)", left)
    duck.executemany("INSERT INTO r VALUES (?, ?, ?, ?)", right)
    duck_rows = duck.execute(
        f"SELECT l.k1, l.k2, l.ts, l.x, r.ts, r.v FROM l ASOF LEFT JOIN r "
        f"ON {on} AND l.ts {condition} r.ts"
    ).fetchall()

    def ordered(rows):
        return sorted(rows, key=lambda row: tuple((value is None, value if value is not None else 0) for value in row))

    assert len(quiver_rows) == len(left)
    assert ordered(quiver_rows) == ordered(duck_rows)
    matched = sum(1 for row in quiver_rows if row[5] is not None)
    assert matched > len(left) // 2, "the data should make most rows match"


def test_asof_join_spills_instead_of_holding_the_right_side(tmp_path):
    """With little query memory the sorts under the join spill to disk and the answer is unchanged."""
    from conftest import QuiverServer

    server = QuiverServer(tmp_path / "data", args=["--query-memory-mb", "16"])
    port = server.start()
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="quiver", dbname="quiver", autocommit=True) as conn:
            # Each sort keeps this much back for merging its spilled runs (default 10 MB).
            conn.execute("SET datafusion.execution.sort_spill_reservation_bytes = 1048576")
            conn.execute("CREATE TABLE r (k BIGINT, ts BIGINT, v BIGINT)")
            conn.execute("CREATE TABLE l (k BIGINT, ts BIGINT)")
            # Right: key k has times 0, 10, 20, ... with v = time; left probes at time 10 * i + 5.
            conn.execute("INSERT INTO r SELECT value % 100, (value / 100) * 10 AS ts, (value / 100) * 10 AS v FROM generate_series(0, 599999)")
            conn.execute("INSERT INTO l SELECT value % 100, (value / 100) * 10 + 5 FROM generate_series(0, 199999)")
            query = ("SELECT count(*), count(r.v), sum(l.ts - r.v) FROM l ASOF JOIN r "
                     "MATCH_CONDITION (l.ts >= r.ts) ON l.k = r.k")
            assert conn.execute(query).fetchone() == (200_000, 200_000, 200_000 * 5)
            analyzed = "\n".join(row[1] for row in conn.execute("EXPLAIN ANALYZE " + query).fetchall())
            spills = [int(part.split("=")[1].rstrip(",]")) for part in analyzed.split() if part.startswith("spill_count=")]
            assert spills and max(spills) > 0, analyzed
    finally:
        server.stop()


def test_a_query_beyond_the_memory_limit_is_out_of_memory(tmp_path):
    """When even spilling cannot fit (each sort keeps 10 MB back for merging), 53200, as PostgreSQL."""
    from conftest import QuiverServer

    server = QuiverServer(tmp_path / "data", args=["--query-memory-mb", "4"])
    port = server.start()
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="quiver", dbname="quiver", autocommit=True) as conn:
            conn.execute("CREATE TABLE r (k BIGINT, ts BIGINT, v BIGINT)")
            conn.execute("CREATE TABLE l (k BIGINT, ts BIGINT)")
            conn.execute("INSERT INTO r SELECT value % 100, value AS ts, value AS v FROM generate_series(0, 599999)")
            conn.execute("INSERT INTO l SELECT value % 100, value FROM generate_series(0, 199999)")
            with pytest.raises(psycopg.Error) as failure:
                conn.execute("SELECT count(r.v) FROM l ASOF JOIN r MATCH_CONDITION (l.ts >= r.ts) ON l.k = r.k").fetchone()
            assert failure.value.sqlstate == "53200", failure.value
            assert "out of memory" in str(failure.value)
            # The session goes on.
            assert conn.execute("SELECT count(*) FROM l").fetchone() == (200_000,)
    finally:
        server.stop()

"""psycopg 3: parameters in text and binary, transactions as drivers use them, COPY both ways."""

import datetime
import decimal
import threading
import time

import psycopg
import pytest


def connect(port, **kwargs):
    return psycopg.connect(host="127.0.0.1", port=port, user="quiver", dbname="quiver", **kwargs)


def test_parameters_text_and_binary(quiver):
    with connect(quiver, autocommit=True) as conn:
        conn.execute(
            "CREATE FEATURE GROUP tx (cc_num BIGINT, amount DOUBLE PRECISION, category TEXT, "
            "embedding REAL[], ts TIMESTAMP, PRIMARY KEY (cc_num), EVENT TIME ts)"
        )
        ts = datetime.datetime(2026, 6, 1, 10, 0, 0)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO tx VALUES (%s, %s, %s, %s, %s)",
                [(1, 12.5, "food", [0.5, 1.0], ts), (2, 99.0, None, None, ts + datetime.timedelta(days=1))],
            )
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                cur.execute("SELECT cc_num, amount, category, embedding, ts FROM tx WHERE cc_num = %s", (1,))
                assert cur.fetchall() == [(1, 12.5, "food", [0.5, 1.0], ts)]
                cur.execute("SELECT count(*) FROM tx WHERE amount > %s", (50.0,))
                assert cur.fetchone() == (1,)


def test_driver_transactions_commit(quiver):
    # Without autocommit psycopg wraps statements in BEGIN ... COMMIT.
    with connect(quiver) as conn:
        conn.execute("CREATE TABLE spine (id BIGINT, label BOOLEAN)")
        conn.execute("INSERT INTO spine VALUES (1, true), (2, false)")
        conn.commit()
    with connect(quiver, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM spine").fetchone() == (2,)


def test_copy_both_ways(quiver):
    with connect(quiver, autocommit=True) as conn:
        conn.execute("CREATE TABLE readings (sensor INTEGER, value DOUBLE PRECISION, at TIMESTAMP)")
        with conn.cursor() as cur:
            with cur.copy("COPY readings FROM STDIN") as copy:
                for i in range(1000):
                    copy.write_row((i % 10, i * 0.5, datetime.datetime(2026, 1, 1) + datetime.timedelta(minutes=i)))
            assert cur.rowcount == 1000
            rows = []
            with cur.copy("COPY (SELECT sensor, value FROM readings WHERE sensor = 3 ORDER BY value) TO STDOUT") as copy:
                for row in copy.rows():
                    rows.append(row)
            assert len(rows) == 100
            assert rows[0] == ("3", "1.5")


def test_error_sqlstates(quiver):
    with connect(quiver, autocommit=True) as conn:
        conn.execute("CREATE FEATURE GROUP g (id BIGINT, ts TIMESTAMP, PRIMARY KEY (id), EVENT TIME ts)")
        with pytest.raises(psycopg.errors.NotNullViolation) as error:
            conn.execute("INSERT INTO g VALUES (%s, %s)", (None, datetime.datetime(2026, 1, 1)))
        assert 'column "id"' in str(error.value)
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM nope")
        with pytest.raises(psycopg.errors.DuplicateTable):
            conn.execute("CREATE FEATURE GROUP g (id BIGINT, PRIMARY KEY (id))")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC 1")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_startup_parameters(quiver):
    with connect(quiver, application_name="notebook") as conn:
        assert conn.info.parameter_status("server_version").startswith("15")
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        assert conn.info.parameter_status("integer_datetimes") == "on"
        assert conn.execute("SHOW application_name").fetchone() == ("notebook",)


def test_unknown_database_and_role_are_refused(quiver):
    with pytest.raises(psycopg.OperationalError) as error:
        psycopg.connect(host="127.0.0.1", port=quiver, user="quiver", dbname="nowhere")
    assert "does not exist" in str(error.value)
    with pytest.raises(psycopg.OperationalError) as error:
        psycopg.connect(host="127.0.0.1", port=quiver, user="mallory", dbname="quiver")
    assert 'role "mallory" does not exist' in str(error.value)


def test_large_csv_copy_spans_chunks_with_quoted_newlines(quiver):
    rows = 400_000
    lines = []
    for i in range(rows):
        note = f'"line one\nline two of {i}"' if i % 1000 == 0 else f"note {i}"
        lines.append(f"{i},{i * 0.25},{note}\n")
    data = "".join(lines).encode()
    assert len(data) > 8 * 1024 * 1024, "the data must span more than one parse chunk"
    with connect(quiver, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id BIGINT, score DOUBLE PRECISION, note TEXT)")
        with conn.cursor() as cur:
            with cur.copy("COPY notes FROM STDIN WITH (FORMAT csv)") as copy:
                for start in range(0, len(data), 65536):
                    copy.write(data[start:start + 65536])
            assert cur.rowcount == rows
        assert conn.execute("SELECT count(*), sum(score) FROM notes").fetchone() == (rows, sum(i * 0.25 for i in range(rows)))
        assert conn.execute("SELECT note FROM notes WHERE id = 399000").fetchone() == ("line one\nline two of 399000",)


def test_binary_copy_both_ways(quiver):
    types = ["bigint", "boolean", "smallint", "integer", "real", "double precision", "text", "bytea",
             "date", "timestamp", "timestamptz", "real[]", "bigint[]"]
    row = (7, True, 3, -9, 1.5, 2.25, "héllo", b"\x00\xff", datetime.date(2026, 6, 1),
           datetime.datetime(2026, 6, 1, 12, 30, 0, 250000),
           datetime.datetime(2026, 6, 1, 10, 0, tzinfo=datetime.timezone.utc), [0.5, None, 1.0], [1, 2])
    empty = (8,) + (None,) * (len(types) - 1)
    with connect(quiver, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE everything (id BIGINT, b BOOLEAN, s SMALLINT, i INTEGER, r REAL, d DOUBLE PRECISION, "
            "t TEXT, y BYTEA, dt DATE, ts TIMESTAMP, tz TIMESTAMPTZ, ar REAL[], al BIGINT[])"
        )
        with conn.cursor() as cur:
            with cur.copy("COPY everything FROM STDIN WITH (FORMAT binary)") as copy:
                copy.set_types(types)
                copy.write_row(row)
                copy.write_row(empty)
            assert cur.rowcount == 2
            got = []
            with cur.copy("COPY (SELECT * FROM everything ORDER BY id) TO STDOUT WITH (FORMAT binary)") as copy:
                copy.set_types(types)
                got = list(copy.rows())
        assert got[0][:6] == row[:6]
        assert got[0][6:] == row[6:]
        assert got[1] == empty
        # Text results agree with what binary COPY stored.
        assert conn.execute("SELECT t, y, ar FROM everything WHERE id = 7").fetchone() == ("héllo", b"\x00\xff", [0.5, None, 1.0])


def test_copy_to_with_header_counts_rows_not_the_header(quiver):
    with connect(quiver, autocommit=True) as conn:
        conn.execute("CREATE TABLE small (id BIGINT)")
        conn.execute("INSERT INTO small VALUES (1), (2), (3)")
        with conn.cursor() as cur:
            with cur.copy("COPY small TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
                data = b"".join(bytes(chunk) for chunk in copy)
            assert data.decode().splitlines()[0] == "id"
            assert cur.rowcount == 3


def test_online_lookups_with_parameters_and_copy(quiver):
    with connect(quiver, autocommit=True) as conn:
        conn.execute(
            "CREATE FEATURE GROUP profiles (user_id BIGINT, score DOUBLE PRECISION, segment TEXT, ts TIMESTAMP, "
            "PRIMARY KEY (user_id), EVENT TIME ts) WITH (online = true)"
        )
        with conn.cursor() as cur:
            with cur.copy("COPY profiles FROM STDIN WITH (FORMAT csv)") as copy:
                for user_id in range(1, 201):
                    copy.write(f"{user_id},{user_id / 10},s{user_id % 3},2026-01-01 00:00:00\n")
        ts = datetime.datetime(2026, 1, 2)
        conn.execute("INSERT INTO profiles VALUES (%s, %s, %s, %s)", (7, 99.5, "vip", ts))
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                # Prepared and executed repeatedly, as a serving client does.
                for _ in range(3):
                    cur.execute("SELECT score, segment FROM online.profiles WHERE user_id = %s", (7,), prepare=True)
                    assert cur.fetchall() == [(99.5, "vip")]
                cur.execute("SELECT user_id, score FROM online.profiles WHERE user_id = ANY(%s) ORDER BY user_id", ([3, 7, 500],))
                assert cur.fetchall() == [(3, 0.3), (7, 99.5)]
                cur.execute("SELECT user_id FROM online.profiles WHERE user_id = %s", (404,))
                assert cur.fetchall() == []
        assert conn.execute("SELECT count(*) FROM online.profiles").fetchone() == (200,)
        assert conn.execute("DELETE FROM profiles WHERE user_id = ANY(%s)", ([1, 2],)).rowcount == 2
        assert conn.execute("SELECT online_rows FROM quiver.feature_groups WHERE name = 'profiles'").fetchone() == (198,)


def test_prepared_queries_see_each_execution_s_parameters_and_time(quiver):
    """A prepared query is optimised once, before its parameters are known: each execution's
    values must still reach the online lookups, and now() must stay the time of each execution."""
    with connect(quiver, autocommit=True) as conn:
        conn.execute(
            "CREATE FEATURE GROUP visits (id BIGINT, n BIGINT, ts TIMESTAMP, PRIMARY KEY (id), EVENT TIME ts) "
            "WITH (online = true)"
        )
        conn.execute("INSERT INTO visits SELECT v, v * 10, to_timestamp_seconds(v) FROM generate_series(1, 50) AS t(v)")
        with conn.cursor() as cur:
            for key in (3, 9, 77, 3):
                cur.execute("SELECT count(*), sum(n) FROM online.visits WHERE id = %s", (key,), prepare=True)
                assert cur.fetchall() == ([(1, key * 10)] if key <= 50 else [(0, None)])
            for keys in ([1, 2], [50], []):
                cur.execute("SELECT sum(n) FROM online.visits WHERE id = ANY(%s)", (keys,), prepare=True)
                assert cur.fetchone() == (sum(k * 10 for k in keys) or None,)
            seen = []
            for _ in range(2):
                cur.execute("SELECT now() FROM online.visits WHERE id = %s", (1,), prepare=True)
                seen.append(cur.fetchone()[0])
                time.sleep(0.01)
            assert seen[0] < seen[1]
            # More keys than one lookup gets: the filter still applies, to a scan.
            many = list(range(-100_000, 3))
            cur.execute("SELECT count(*), sum(n) FROM online.visits WHERE id = ANY(%s)", (many,))
            assert cur.fetchone() == (2, 30)


def test_server_side_cursor_fetches_in_batches(quiver):
    """psycopg's named cursors: DECLARE in a transaction block, the cursor described as a portal,
    FETCH FORWARD n until the rows run out, CLOSE; the cursor ends with the block."""
    with connect(quiver) as conn:
        with conn.cursor(name="numbers") as cur:
            cur.itersize = 7
            cur.execute("SELECT v, v * 2 AS twice FROM generate_series(1, 30) AS t(v) ORDER BY v")
            assert [d.name for d in cur.description] == ["v", "twice"]
            assert cur.fetchmany(5) == [(i, 2 * i) for i in range(1, 6)]
            assert cur.fetchone() == (6, 12)
            assert [row[0] for row in cur] == list(range(7, 31))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.commit()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_cursor_statements_and_their_errors(quiver):
    with connect(quiver, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.NoActiveSqlTransaction) as outside:
            conn.execute("DECLARE c CURSOR FOR SELECT 1")
        assert outside.value.sqlstate == "25P01"
        conn.execute("DECLARE held CURSOR WITH HOLD FOR SELECT v FROM generate_series(1, 5) AS t(v) ORDER BY v")
        fetched = conn.execute("FETCH 2 FROM held")
        assert fetched.fetchall() == [(1,), (2,)]
        # The completion tag names the command, as PostgreSQL's does.
        assert fetched.statusmessage == "FETCH 2"
        assert conn.execute("FETCH NEXT FROM held").fetchall() == [(3,)]
        assert conn.execute("FETCH ALL FROM held").fetchall() == [(4,), (5,)]
        assert conn.execute("FETCH ALL FROM held").fetchall() == []
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            conn.execute("FETCH BACKWARD 1 FROM held")
        conn.execute("CLOSE held")
        with pytest.raises(psycopg.errors.InvalidCursorName) as unknown:
            conn.execute("FETCH 1 FROM held")
        assert unknown.value.sqlstate == "34000"
        conn.execute("BEGIN")
        conn.execute("DECLARE a CURSOR FOR SELECT 1")
        with pytest.raises(psycopg.errors.DuplicateCursor):
            conn.execute("DECLARE a CURSOR FOR SELECT 2")
        conn.execute("ROLLBACK")


def test_an_error_aborts_the_block_until_rollback(quiver):
    with connect(quiver) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM missing")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction) as aborted:
            conn.execute("SELECT 1")
        assert aborted.value.sqlstate == "25P02"
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)
        # A savepoint recovers from an error inside the block, as psycopg's nested transactions do.
        with pytest.raises(psycopg.errors.UndefinedTable):
            with conn.transaction():
                conn.execute("SELECT * FROM missing")
        assert conn.execute("SELECT 3").fetchone() == (3,)
        conn.commit()


def test_rollback_discards_writes_and_warns_only_about_ddl(quiver):
    notices = []
    with connect(quiver) as conn:
        conn.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary))
        conn.execute("CREATE TABLE spine (id BIGINT)")
        conn.execute("INSERT INTO spine VALUES (1)")
        with conn.cursor() as cur:
            with cur.copy("COPY spine FROM STDIN") as copy:
                copy.write_row((2,))
        assert conn.execute("SELECT count(*) FROM spine").fetchone() == (2,)
        conn.rollback()
        # The CREATE TABLE committed at once; the writes are gone.
        assert any("changed the catalog" in notice for notice in notices), notices
        assert conn.execute("SELECT count(*) FROM spine").fetchone() == (0,)
        conn.rollback()


def test_other_sessions_see_a_block_only_after_commit(quiver):
    with connect(quiver, autocommit=True) as other, connect(quiver) as conn:
        other.execute(
            "CREATE FEATURE GROUP balances (id BIGINT, amount DOUBLE PRECISION, ts TIMESTAMP, "
            "PRIMARY KEY (id), EVENT TIME ts) WITH (online = true)"
        )
        other.execute("CREATE TABLE ledger (id BIGINT, delta DOUBLE PRECISION)")
        other.execute("INSERT INTO balances VALUES (1, 100, '2026-01-01'), (2, 50, '2026-01-01')")
        # A transfer: both tables or neither.
        conn.execute("INSERT INTO balances VALUES (1, 70, '2026-01-02'), (2, 80, '2026-01-02')")
        with conn.cursor() as cur:
            with cur.copy("COPY ledger FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(b"1,-30\n2,30\n")
            assert cur.rowcount == 2
        conn.execute("DELETE FROM ledger WHERE delta > 100")
        assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (2,)
        assert other.execute("SELECT count(*) FROM ledger").fetchone() == (0,)
        assert other.execute("SELECT amount FROM online.balances WHERE id = 1").fetchone() == (100.0,)
        conn.commit()
        assert other.execute("SELECT sum(delta) FROM ledger").fetchone() == (0.0,)
        assert other.execute("SELECT amount FROM online.balances WHERE id = 1").fetchone() == (70.0,)
        assert other.execute("SELECT amount FROM balances WHERE id = 2 ORDER BY ts DESC LIMIT 1").fetchone() == (80.0,)


def test_a_multi_table_commit_is_seen_whole_by_other_sessions(quiver):
    """Each block adds one row to each of two tables; a reader comparing their counts in one
    statement never finds them apart, however its planning falls against the COMMITs."""
    with connect(quiver, autocommit=True) as setup:
        setup.execute("CREATE TABLE debits (n INTEGER)")
        setup.execute("CREATE TABLE credits (n INTEGER)")
        setup.execute("CREATE TABLE seen (debits BIGINT, credits BIGINT)")
    done = threading.Event()
    apart = []
    reads = []
    failures = []

    def read():
        try:
            with connect(quiver, autocommit=True) as reader:
                while not done.is_set():
                    debits, credits = reader.execute(
                        "SELECT (SELECT count(*) FROM debits) AS d, (SELECT count(*) FROM credits) AS c"
                    ).fetchone()
                    reads.append(debits)
                    if debits != credits:
                        apart.append((debits, credits))
                    # The same reading planned by an INSERT ... SELECT.
                    reader.execute(
                        "INSERT INTO seen SELECT (SELECT count(*) FROM debits), (SELECT count(*) FROM credits)"
                    )
        except Exception as error:  # the assertion below reports it
            failures.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with connect(quiver) as writer:
            for n in range(100):
                writer.execute("INSERT INTO debits VALUES (%s)", (n,))
                writer.execute("INSERT INTO credits VALUES (%s)", (n,))
                writer.commit()
    finally:
        done.set()
        reader.join()
    assert failures == []
    assert len(reads) > 40
    assert apart == []
    with connect(quiver, autocommit=True) as check:
        assert check.execute("SELECT count(*) FROM seen WHERE debits <> credits").fetchone() == (0,)


def test_statement_timeout_never_cuts_a_commit(quiver):
    """A COMMIT writing two tables takes far longer than 1 ms (it fsyncs a record and each
    table); it runs to its end anyway, and a read in the same session is still cut."""
    with connect(quiver, autocommit=True) as setup:
        setup.execute("CREATE TABLE left_side (n INTEGER)")
        setup.execute("CREATE TABLE right_side (n INTEGER)")
    rows = 20_000
    with connect(quiver) as conn:
        conn.execute("SET statement_timeout = '1ms'")
        with conn.cursor() as cur:
            for table in ("left_side", "right_side"):
                with cur.copy(f"COPY {table} FROM STDIN") as copy:
                    copy.write("".join(f"{n}\n" for n in range(rows)))
        conn.commit()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b")
        conn.rollback()
    with connect(quiver, autocommit=True) as check:
        assert check.execute(
            "SELECT (SELECT count(*) FROM left_side), (SELECT count(*) FROM right_side)"
        ).fetchone() == (rows, rows)


def test_a_failed_copy_aborts_the_block(quiver):
    with connect(quiver, autocommit=True) as setup:
        setup.execute("CREATE TABLE counts (n INTEGER NOT NULL)")
    with connect(quiver) as conn:
        conn.execute("INSERT INTO counts VALUES (1)")
        with pytest.raises(psycopg.errors.NotNullViolation):
            with conn.cursor() as cur:
                with cur.copy("COPY counts FROM STDIN") as copy:
                    copy.write_row((None,))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM counts").fetchone() == (0,)
        conn.rollback()


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_every_type_round_trips(quiver, binary):
    """Each column type of the spec, arrays (with NULL elements) and timestamptz included, as
    parameters and results in text and in binary format; numeric parameters arrive as numbers."""
    row = (
        True, 2, 3, 4, 1.5, 2.25, "text", "var", b"\x00\xff", datetime.date(2024, 1, 2),
        datetime.datetime(2024, 1, 2, 3, 4, 5, 678000),
        datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        [0.5, 1.5], [1.25, None], [1, 2, 3],
    )
    with connect(quiver, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE alltypes (b BOOLEAN, s SMALLINT, i INTEGER, l BIGINT, r REAL, "
            "d DOUBLE PRECISION, t TEXT, v VARCHAR(10), by BYTEA, dt DATE, ts TIMESTAMP, "
            "tz TIMESTAMPTZ, fa REAL[], da DOUBLE PRECISION[], ia BIGINT[])"
        )
        with conn.cursor(binary=binary) as cur:
            cur.execute("INSERT INTO alltypes VALUES (" + ", ".join(["%s"] * len(row)) + ")", row)
            assert cur.execute("SELECT * FROM alltypes").fetchone() == row
            assert cur.execute("SELECT %s::double precision * 2", (decimal.Decimal("1.25"),)).fetchone() == (2.5,)


def test_unnamed_columns_are_named_as_postgresql_names_them(quiver):
    with connect(quiver, autocommit=True) as conn:
        conn.execute("CREATE TABLE spend (id BIGINT, amount DOUBLE PRECISION)")
        cur = conn.execute(
            "SELECT count(*), max(amount), amount::text, CASE WHEN id > 1 THEN 1 END, now() "
            "FROM spend GROUP BY amount, id"
        )
        assert [d.name for d in cur.description] == ["count", "max", "amount", "case", "now"]
        # Columns may share a name, as in PostgreSQL; anything else is ?column?.
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            cur.execute(
                "SELECT count(*), count(amount), id, id, (SELECT 1), (SELECT 2), id + 1 "
                "FROM spend GROUP BY id"
            )
            assert [d.name for d in cur.description] == [
                "count", "count", "id", "id", "?column?", "?column?", "?column?"
            ]
        conn.execute("INSERT INTO spend VALUES (7, 1.5)")
        prepared = conn.execute("SELECT id, id, %s::bigint FROM spend", (3,), prepare=True)
        assert [d.name for d in prepared.description] == ["id", "id", "int8"]
        assert prepared.fetchall() == [(7, 7, 3)]


def test_deallocate_drops_prepared_statements(quiver):
    with connect(quiver, autocommit=True) as conn:
        conn.execute("SELECT %s::bigint", (1,), prepare=True)
        assert conn.execute("SELECT %s::bigint", (2,), prepare=True).fetchone() == (2,)
        conn.execute("DEALLOCATE ALL")
        # psycopg still holds the name it prepared; the server no longer has the statement, as
        # PostgreSQL would not.
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            conn.execute("SELECT %s::bigint", (3,), prepare=True)
        with pytest.raises(psycopg.errors.InvalidSqlStatementName) as unknown:
            conn.execute("DEALLOCATE no_such_statement")
        assert unknown.value.sqlstate == "26000"


def test_current_setting_and_set_config_variants(quiver):
    with connect(quiver, autocommit=True) as conn:
        assert conn.execute("SELECT current_setting('no_such_setting', true)").fetchone() == (None,)
        # A transaction-local set_config outside a block changes nothing after its statement.
        assert conn.execute("SELECT set_config('application_name', 'once', true)").fetchone() == ("once",)
        assert conn.execute("SHOW application_name").fetchone() == ("",)

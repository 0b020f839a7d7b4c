"""asyncpg: its startup (set_config of jit), prepared statements typed by the server, COPY of
records, and reads of feature groups online and offline."""

import asyncio
import datetime

import asyncpg


def run(coroutine):
    return asyncio.run(coroutine)


def test_queries_parameters_and_copy(quiver):
    async def scenario():
        conn = await asyncpg.connect(f"postgresql://quiver@127.0.0.1:{quiver}/quiver")
        try:
            await conn.execute(
                "CREATE FEATURE GROUP transactions (cc_num BIGINT NOT NULL, amount DOUBLE PRECISION, "
                "category TEXT, ts TIMESTAMP NOT NULL, PRIMARY KEY (cc_num), EVENT TIME ts) "
                "WITH (online = true)"
            )
            # Parameters are encoded by the types the server describes: bigint from the column,
            # and from a cast where nothing else says.
            await conn.executemany(
                "INSERT INTO transactions VALUES ($1, $2, $3, $4)",
                [
                    (1, 10.5, "food", datetime.datetime(2024, 1, 1, 10)),
                    (2, None, None, datetime.datetime(2024, 1, 1, 11)),
                ],
            )
            assert await conn.fetchval("SELECT $1::bigint + 1", 41) == 42
            rows = await conn.fetch(
                "SELECT cc_num, amount, category FROM transactions WHERE cc_num >= $1 ORDER BY cc_num", 1
            )
            assert [tuple(r) for r in rows] == [(1, 10.5, "food"), (2, None, None)]
            online = await conn.fetchrow("SELECT amount FROM online.transactions WHERE cc_num = $1", 1)
            assert online["amount"] == 10.5
            # A prepared statement reused with other values.
            lookup = await conn.prepare("SELECT category FROM online.transactions WHERE cc_num = $1")
            assert [await lookup.fetchval(k) for k in (1, 2, 3)] == ["food", None, None]

            await conn.execute("CREATE TABLE labels (cc_num BIGINT PRIMARY KEY, fraud BOOLEAN)")
            await conn.copy_records_to_table("labels", records=[(1, True), (2, False)])
            assert await conn.fetchval("SELECT count(*) FROM labels WHERE fraud") == 1
            # set_config / current_setting, as asyncpg itself uses them.
            assert await conn.fetchval("SELECT set_config('application_name', 'etl', false)") == "etl"
            assert await conn.fetchval("SELECT current_setting('application_name')") == "etl"
            assert await conn.fetchval("SHOW application_name") == "etl"
        finally:
            await conn.close()

    run(scenario())


def test_errors_carry_sqlstate(quiver):
    async def scenario():
        conn = await asyncpg.connect(f"postgresql://quiver@127.0.0.1:{quiver}/quiver")
        try:
            try:
                await conn.fetch("SELECT * FROM missing")
            except asyncpg.UndefinedTableError as error:
                assert error.sqlstate == "42P01"
            else:
                raise AssertionError("no error")
            try:
                await conn.fetchval("SELECT current_setting('no_such_setting')")
            except asyncpg.PostgresError as error:
                assert error.sqlstate == "42704"
            else:
                raise AssertionError("no error")
        finally:
            await conn.close()

    run(scenario())


def test_arrays(quiver):
    """Array results and parameters: asyncpg learns their element types with its recursive type
    introspection query, which the server answers from pg_type."""

    async def scenario():
        conn = await asyncpg.connect(f"postgresql://quiver@127.0.0.1:{quiver}/quiver")
        try:
            await conn.execute(
                "CREATE FEATURE GROUP embeddings (id BIGINT NOT NULL, v DOUBLE PRECISION[], "
                "bucket INTEGER[], ts TIMESTAMP NOT NULL, PRIMARY KEY (id), EVENT TIME ts) "
                "WITH (online = true)"
            )
            await conn.executemany(
                "INSERT INTO embeddings VALUES ($1, $2, $3, $4)",
                [
                    (1, [0.5, 1.5], [1, 2], datetime.datetime(2024, 1, 1)),
                    (2, [2.5], None, datetime.datetime(2024, 1, 1)),
                ],
            )
            rows = await conn.fetch("SELECT id, v, bucket FROM embeddings ORDER BY id")
            assert [tuple(r) for r in rows] == [(1, [0.5, 1.5], [1, 2]), (2, [2.5], None)]
            # A batch lookup by an array parameter, online and offline.
            online = await conn.fetch(
                "SELECT id, v FROM online.embeddings WHERE id = ANY($1) ORDER BY id", [1, 2, 3]
            )
            assert [tuple(r) for r in online] == [(1, [0.5, 1.5]), (2, [2.5])]
            assert await conn.fetchval("SELECT $1::bigint[]", [7, 8]) == [7, 8]
            assert await conn.fetchval("SELECT ARRAY['a', 'b']") == ["a", "b"]
            # Binary COPY of records with arrays, and a cursor over them.
            await conn.execute("CREATE TABLE vectors (id BIGINT, v REAL[], at TIMESTAMPTZ)")
            at = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
            await conn.copy_records_to_table(
                "vectors", records=[(1, [0.5, 1.5], at), (2, [], None), (3, None, at)]
            )
            async with conn.transaction():
                cursor = await conn.cursor("SELECT id, v, at FROM vectors ORDER BY id")
                first = await cursor.fetch(2)
                rest = await cursor.fetch(5)
            assert [tuple(r) for r in first] == [(1, [0.5, 1.5], at), (2, [], None)]
            assert [tuple(r) for r in rest] == [(3, None, at)]
            # The introspection itself, as asyncpg's codecs see it.
            types = await conn.fetch(
                "SELECT t.oid, t.typname FROM pg_type t WHERE t.oid = ANY($1::oid[]) ORDER BY t.oid",
                [701, 1022],
            )
            assert [tuple(r) for r in types] == [(701, "float8"), (1022, "_float8")]
        finally:
            await conn.close()

    run(scenario())

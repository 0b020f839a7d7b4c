"""The introspection BI tools and drivers send (DBeaver, Metabase, pgAdmin-style queries): who and
where am I, privileges, settings, types, OID casts, descriptions, answered from pg_catalog."""

import psycopg
import pytest


@pytest.fixture()
def conn(quiver):
    with psycopg.connect(host="127.0.0.1", port=quiver, user="quiver", dbname="quiver", autocommit=True) as conn:
        conn.execute(
            "CREATE FEATURE GROUP transactions (cc_num BIGINT NOT NULL, amount DOUBLE PRECISION, "
            "ts TIMESTAMP NOT NULL, PRIMARY KEY (cc_num), EVENT TIME ts) "
            "WITH (online = true, description = 'card transactions')"
        )
        yield conn


def one(conn, sql):
    return conn.execute(sql).fetchone()


def test_identity_and_location(conn):
    assert one(conn, "SELECT version()")[0].startswith("PostgreSQL 15.0 (Quiver ")
    assert one(conn, "SELECT current_user, session_user, user") == ("quiver", "quiver", "quiver")
    cur = conn.execute("SELECT current_user")
    assert [d.name for d in cur.description] == ["current_user"]
    assert one(conn, "SELECT current_database(), current_schema()") == ("quiver", "public")
    assert "public" in one(conn, "SELECT current_schemas(true)")[0]


def test_privileges_types_and_oid_casts(conn):
    assert one(conn, "SELECT has_table_privilege('transactions', 'SELECT'), "
                     "has_schema_privilege('public', 'USAGE')") == (True, True)
    assert one(conn, "SELECT typarray FROM pg_catalog.pg_type WHERE typname = 'int8'") == (1016,)
    assert one(conn, "SELECT format_type(1043, 24), format_type(20, -1)") == ("character varying(20)", "bigint")
    assert one(conn, "SELECT 'int8'::regtype::oid") == (20,)
    (table_oid,) = one(conn, "SELECT 'transactions'::regclass::oid")
    assert one(conn, f"SELECT relname, relkind FROM pg_catalog.pg_class WHERE oid = {table_oid}") == ("transactions", "r")
    assert one(conn, f"SELECT obj_description({table_oid}, 'pg_class')") == ("card transactions",)


def test_metabase_style_table_listing(conn):
    rows = conn.execute(
        "SELECT n.nspname, c.relname, d.description FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON c.relnamespace = n.oid "
        "LEFT JOIN pg_catalog.pg_description d ON c.oid = d.objoid AND d.objsubid = 0 "
        "  AND d.classoid = 'pg_class'::regclass "
        "WHERE c.relkind IN ('r', 'v', 'p', 'm', 'f') AND n.nspname IN ('public', 'online') "
        "  AND has_table_privilege(c.oid, 'SELECT') ORDER BY 1, 2"
    ).fetchall()
    assert rows == [
        ("online", "transactions", "card transactions"),
        ("online", "transactions_1", "card transactions"),
        ("public", "transactions", "card transactions"),
        ("public", "transactions_1", "card transactions"),
    ]


def test_pg_settings_shows_the_session_settings(conn):
    conn.execute("SET application_name = 'metabase'")
    settings = dict(conn.execute("SELECT name, setting FROM pg_catalog.pg_settings").fetchall())
    assert settings["application_name"] == "metabase"
    assert settings["server_version_num"] == "150000"
    assert settings["TimeZone"] == "UTC"
    assert one(conn, "SELECT source, reset_val FROM pg_catalog.pg_settings WHERE name = 'application_name'") == (
        "session", "",
    )
    assert one(conn, "SELECT context FROM pg_catalog.pg_settings WHERE name = 'server_version'") == ("internal",)
    assert one(conn, "SELECT current_setting('server_version_num')") == ("150000",)


def test_relation_sizes_come_from_the_offline_files(conn):
    size = "SELECT pg_table_size('transactions_1'::regclass) AS t, pg_relation_size('transactions'::regclass) AS r"
    assert one(conn, size) == (0, 0)
    conn.execute("INSERT INTO transactions VALUES (1, 10.0, '2024-01-01 10:00:00'), (2, 20.0, '2024-01-01 11:00:00')")
    table, relation = one(conn, size)
    assert table == relation > 0 and table % 8192 == 0
    assert one(conn, f"SELECT pg_size_pretty({table}::bigint)") == (f"{table} bytes" if table < 10240 else f"{round(table / 1024)} kB",)
    assert one(conn, "SELECT pg_size_pretty(10485760::bigint)") == ("10 MB",)

"""Security and multi-tenancy: TLS, SCRAM-SHA-256, project roles on every statement kind,
isolation of listings, sharing, the audit log and the connection and statement limits."""

import asyncio
import socket
import struct
import subprocess
import time

import asyncpg
import psycopg
import pytest

from conftest import QuiverServer, free_port, make_certificates

ROLES = ["observer", "scientist", "owner"]
GRANTS = {"observer": "OBSERVER", "scientist": "DATA SCIENTIST", "owner": "DATA OWNER"}


def connect(port, user="quiver", dbname="fraud", **options):
    return psycopg.connect(host="127.0.0.1", port=port, user=user, dbname=dbname, autocommit=True, **options)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls") / "test", "Quiver test")


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory, certificates):
    """TLS required, and passwords: SCRAM for everyone."""
    server = QuiverServer(
        tmp_path_factory.mktemp("secure") / "data",
        args=["--tls-cert", str(certificates / "server.crt"), "--tls-key", str(certificates / "server.key"),
              "--tls-required"],
        env={"QUIVER_PASSWORD": "root-secret"},
    )
    port = server.start()
    tls = {"sslmode": "verify-full", "sslrootcert": str(certificates / "ca.crt")}
    with psycopg.connect(host="localhost", port=port, user="quiver", dbname="quiver", password="root-secret",
                         autocommit=True, **tls) as conn:
        conn.execute("CREATE USER alice PASSWORD 'wonderland'")
        conn.execute("CREATE USER nopass")
        conn.execute("GRANT OBSERVER ON PROJECT quiver TO alice, nopass")
    yield port, tls
    server.stop()


def test_psql_and_psycopg_connect_with_verify_full(secure_server, certificates):
    port, tls = secure_server
    with psycopg.connect(host="localhost", port=port, user="alice", dbname="quiver", password="wonderland",
                         **tls) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)
    out = subprocess.run(
        ["psql", f"host=localhost port={port} user=alice dbname=quiver sslmode=verify-full "
                 f"sslrootcert={certificates / 'ca.crt'}", "-X", "-At", "-c", "SELECT 40 + 2", "-c", "\\conninfo"],
        env={"PGPASSWORD": "wonderland", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "42"
    assert "SSL connection" in out.stdout


def test_plaintext_is_refused_when_tls_is_required(secure_server):
    port, _ = secure_server
    with pytest.raises(psycopg.OperationalError, match="requires TLS"):
        psycopg.connect(host="127.0.0.1", port=port, user="alice", dbname="quiver", password="wonderland",
                        sslmode="disable")


def test_a_certificate_from_another_ca_fails_verification(secure_server, tmp_path):
    port, _ = secure_server
    other = make_certificates(tmp_path / "other", "Other")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(host="localhost", port=port, user="alice", dbname="quiver", password="wonderland",
                        sslmode="verify-full", sslrootcert=str(other / "ca.crt"))


@pytest.mark.parametrize(
    "user, password",
    [("alice", "Wonderland"), ("quiver", "wrong"), ("ghost", "anything"), ("nopass", "")],
)
def test_a_wrong_password_unknown_user_or_user_without_password_is_28p01(secure_server, certificates, user, password):
    port, _ = secure_server

    async def attempt():
        await asyncpg.connect(host="localhost", port=port, user=user, database="quiver", password=password or "x",
                              ssl=_ssl_context(certificates))

    with pytest.raises(asyncpg.exceptions.InvalidPasswordError, match=f'password authentication failed for user "{user}"'):
        asyncio.run(attempt())


def _ssl_context(certificates):
    import ssl

    context = ssl.create_default_context(cafile=str(certificates / "ca.crt"))
    return context


def test_asyncpg_authenticates_with_scram_over_tls(secure_server, certificates):
    port, _ = secure_server

    async def session():
        conn = await asyncpg.connect(host="localhost", port=port, user="alice", database="quiver",
                                     password="wonderland", ssl=_ssl_context(certificates))
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    assert asyncio.run(session()) == "alice"


def test_failed_logins_are_audited_and_passwords_are_never_stored(secure_server):
    port, tls = secure_server
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="localhost", port=port, user="alice", dbname="quiver", password="nope", **tls)
    with psycopg.connect(host="localhost", port=port, user="quiver", dbname="quiver", password="root-secret",
                         autocommit=True, **tls) as conn:
        rows = conn.execute(
            "SELECT user_name, project, statement, success, error FROM quiver.audit_log "
            "WHERE statement = 'LOGIN' AND user_name = 'alice'"
        ).fetchall()
        assert rows and all(r[:4] == ("alice", "quiver", "LOGIN", False) for r in rows)
        assert 'password authentication failed for user "alice"' in rows[-1][4]
        assert conn.execute("SELECT rolpassword FROM pg_roles WHERE rolname = 'alice'").fetchone() == ("********",)


def test_a_password_file_sets_the_superuser_password(tmp_path):
    (tmp_path / "pw").write_text("from-a-file\n")
    server = QuiverServer(tmp_path / "data", args=["--password-file", str(tmp_path / "pw")])
    port = server.start()
    try:
        with connect(port, dbname="quiver", password="from-a-file") as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("quiver",)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            connect(port, dbname="quiver", password="from-a-file\n")
    finally:
        server.stop()
    log = (tmp_path / "data" / "catalog" / "catalog.log").read_text()
    assert "from-a-file" not in log and "SCRAM-SHA-256$4096:" in log
    # The same password again changes nothing in the catalog.
    server.start()
    server.stop()
    assert (tmp_path / "data" / "catalog" / "catalog.log").read_text() == log


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"], "--tls-cert /nonexistent.crt"),
        (["--tls-cert", "CERT"], "--tls-cert needs --tls-key"),
        (["--tls-required"], "--tls-required needs --tls-cert and --tls-key"),
        (["--tls-cert", "KEY", "--tls-key", "KEY"], "no PEM certificate"),
        (["--tls-cert", "CERT", "--tls-key", "CAKEY"], "do not make a usable pair"),
    ],
)
def test_a_bad_tls_configuration_stops_the_server_at_start(tmp_path, certificates, args, message):
    files = {"CERT": certificates / "server.crt", "KEY": certificates / "server.key", "CAKEY": certificates / "ca.key"}
    args = [str(files.get(a, a)) for a in args]
    server = QuiverServer(tmp_path / "data", args=args)
    out = subprocess.run(server.command(), env=server.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert message in out.stderr
    assert not (tmp_path / "data").exists(), "a misconfigured server must not touch its data directory"


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    """Loopback trust; project fraud with data, users in each role, and a second project."""
    server = QuiverServer(tmp_path_factory.mktemp("tenants") / "data")
    port = server.start()
    with connect(port, dbname="quiver") as conn:
        conn.execute("CREATE PROJECT fraud")
        conn.execute("CREATE PROJECT marketing")
        for role in ROLES:
            conn.execute(f"CREATE USER {role}")
            conn.execute(f"GRANT {GRANTS[role]} ON PROJECT fraud TO {role}")
        conn.execute("CREATE USER outsider")
        conn.execute("CREATE USER spare")
        conn.execute("GRANT DATA OWNER ON PROJECT marketing TO outsider")
    with connect(port) as conn:
        conn.execute(
            "CREATE FEATURE GROUP tx (id BIGINT, a DOUBLE PRECISION, y DOUBLE PRECISION, ts TIMESTAMP NOT NULL, "
            "PRIMARY KEY (id), EVENT TIME ts) WITH (online = true)"
        )
        conn.execute(
            "INSERT INTO tx SELECT v, v / 10.0, 3 * v / 10.0 + 1, to_timestamp_seconds(1767225600 + v) "
            "FROM generate_series(1, 40) AS g(v)"
        )
        conn.execute("CREATE TRAINING DATASET td AS SELECT id, a, y FROM tx FORMAT parquet "
                     "SPLIT (train = 0.75, test = 0.25) SEED 1")
        conn.execute("""SELECT * FROM train_model('m0', 'td', 1, 'linear_regression', '{"label": "y", "exclude": ["id"]}')""")
    yield port
    server.stop()


# Every statement kind, with the least role that may run it; {u} makes names unique per user.
STATEMENTS = [
    ("select offline", "SELECT count(*) FROM tx", "observer"),
    ("select online", "SELECT * FROM online.tx WHERE id = 1", "observer"),
    ("read a training dataset", "SELECT count(*) FROM training_dataset('td', 1, 'train')", "observer"),
    ("predict", "SELECT predict('m0', 1, a) FROM tx LIMIT 1", "observer"),
    ("show", "SHOW FEATURE GROUPS", "observer"),
    ("describe", "DESCRIBE FEATURE GROUP tx", "observer"),
    ("discovery", "SELECT count(*) FROM quiver.features", "observer"),
    ("copy to", "COPY (SELECT * FROM tx) TO STDOUT", "observer"),
    ("create feature view", "CREATE FEATURE VIEW v_{u} AS SELECT id, a FROM tx", "scientist"),
    ("drop feature view", "DROP FEATURE VIEW IF EXISTS nothing_{u}", "scientist"),
    ("create training dataset", "CREATE TRAINING DATASET td_{u} AS SELECT id, a, y FROM tx FORMAT csv", "scientist"),
    ("drop training dataset", "DROP TRAINING DATASET IF EXISTS nothing_{u}", "scientist"),
    ("train_model",
     """SELECT * FROM train_model('m_{u}', 'td', 1, 'linear_regression', '{{"label": "y", "exclude": ["id"]}}')""",
     "scientist"),
    ("create feature group",
     "CREATE FEATURE GROUP g_{u} (id BIGINT, ts TIMESTAMP, PRIMARY KEY (id), EVENT TIME ts)", "owner"),
    ("drop feature group", "DROP FEATURE GROUP IF EXISTS nothing_{u}", "owner"),
    ("create table", "CREATE TABLE t_{u} (x BIGINT)", "owner"),
    ("insert", "INSERT INTO tx VALUES ({n}, 1.0, 2.0, '2026-01-01 00:00:00')", "owner"),
    ("copy from", "COPY tx FROM STDIN", "owner"),
    ("delete", "DELETE FROM tx WHERE id = 100000", "owner"),
    ("grant", "GRANT OBSERVER ON PROJECT fraud TO spare", "owner"),
    ("create user", "CREATE USER x_{u}", "superuser"),
    ("explicit location", "CREATE TRAINING DATASET l_{u} AS SELECT id FROM tx FORMAT csv LOCATION 'file://{tmp}/l_{u}'",
     "superuser"),
]


def run(conn, sql):
    if sql.startswith("COPY tx FROM STDIN"):
        with conn.cursor().copy(sql) as copy:
            copy.write_row((90000 + hash(conn.info.user) % 1000, 1.0, 2.0, "2026-01-01 00:00:00"))
    elif sql.startswith("COPY"):
        with conn.cursor().copy(sql) as copy:
            for _ in copy:
                pass
    else:
        conn.execute(sql)


@pytest.mark.parametrize("user", ROLES + ["quiver"])
def test_every_role_against_every_statement_kind(tenants, tmp_path, user):
    rank = {"observer": 0, "scientist": 1, "owner": 2, "superuser": 3}
    user_rank = rank["superuser"] if user == "quiver" else rank[user]
    with connect(tenants, user=user) as conn:
        for index, (kind, template, least) in enumerate(STATEMENTS):
            sql = template.format(u=user, n=1000 + 100 * user_rank + index, tmp=tmp_path)
            if user_rank >= rank[least]:
                run(conn, sql)
            else:
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                    run(conn, sql)


def test_a_non_member_cannot_connect_and_sees_only_their_projects(tenants):
    with pytest.raises(psycopg.OperationalError, match='user "outsider" is not a member of project "fraud"'):
        connect(tenants, user="outsider")
    with connect(tenants, user="outsider", dbname="marketing") as conn:
        assert conn.execute("SHOW PROJECTS").fetchall() == [("marketing", None, "quiver")]
        assert conn.execute("SELECT datname FROM pg_database").fetchall() == [("marketing",)]
        assert conn.execute("SELECT name FROM quiver.projects").fetchall() == [("marketing",)]
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'tx'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'tx'").fetchone() == (0,)
    with connect(tenants, dbname="quiver") as conn:
        projects = [r[0] for r in conn.execute("SHOW PROJECTS").fetchall()]
        assert projects == ["fraud", "marketing", "quiver"]


def test_a_revoked_member_loses_access_at_their_next_statement(tenants):
    with connect(tenants, dbname="quiver") as admin:
        admin.execute("GRANT OBSERVER ON PROJECT fraud TO spare")
        with connect(tenants, user="spare") as conn:
            assert conn.execute("SELECT count(*) FROM tx").fetchone()[0] >= 40
            admin.execute("REVOKE OBSERVER ON PROJECT fraud FROM spare")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not a member"):
                conn.execute("SELECT count(*) FROM tx")
        with pytest.raises(psycopg.errors.InvalidGrantOperation, match="owns project"):
            admin.execute("REVOKE ON PROJECT fraud FROM quiver")


def test_sharing_makes_a_feature_group_readable_and_never_writable(tenants):
    with connect(tenants, user="owner") as owner:
        owner.execute("SHARE FEATURE GROUP tx WITH PROJECT marketing")
    with connect(tenants, user="outsider", dbname="marketing") as conn:
        assert conn.execute("SELECT count(*) FROM fraud.tx WHERE id <= 40").fetchone() == (40,)
        assert conn.execute("SELECT count(*) FROM fraud.tx_1 WHERE id <= 40").fetchone() == (40,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match='"fraud.tx_1" is shared with this project to read'):
            conn.execute("INSERT INTO fraud.tx VALUES (5000, 1.0, 1.0, '2026-01-01 00:00:00')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="shared with this project to read"):
            with conn.cursor().copy("COPY fraud.tx FROM STDIN") as copy:
                copy.write_row((5001, 1.0, 1.0, "2026-01-01 00:00:00"))
        # A feature view over the shared group works too.
        conn.execute("CREATE FEATURE VIEW shared_view AS SELECT id, a FROM fraud.tx")
        assert conn.execute("SELECT count(*) FROM shared_view WHERE id <= 40").fetchone() == (40,)
        conn.execute("DROP FEATURE VIEW shared_view")
    with connect(tenants, user="owner") as owner:
        owner.execute("UNSHARE FEATURE GROUP tx FROM PROJECT marketing")
    with connect(tenants, user="outsider", dbname="marketing") as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT count(*) FROM fraud.tx")


def test_the_audit_log_records_ddl_and_grants_for_superusers_and_data_owners(tenants):
    with connect(tenants, user="observer") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE FEATURE GROUP denied (id BIGINT, ts TIMESTAMP, PRIMARY KEY (id), EVENT TIME ts)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="audit_log is readable by superusers"):
            conn.execute("SELECT * FROM quiver.audit_log")
    with connect(tenants, user="owner") as conn:
        rows = conn.execute(
            "SELECT user_name, project, statement, object, success FROM quiver.audit_log ORDER BY time"
        ).fetchall()
        assert ("quiver", "fraud", "CREATE FEATURE GROUP", "tx", True) in rows
        assert ("observer", "fraud", "CREATE FEATURE GROUP", "denied", False) in rows
        assert {r[1] for r in rows} == {"fraud"}, "a data owner sees their project's events only"
    with connect(tenants, dbname="quiver") as conn:
        rows = conn.execute("SELECT user_name, project, statement, object, success FROM quiver.audit_log").fetchall()
        assert ("quiver", "quiver", "GRANT DATA OWNER", "project fraud to owner", True) in rows
        assert ("quiver", "quiver", "CREATE USER", "outsider", True) in rows


def test_connection_limits_are_53300(tmp_path):
    server = QuiverServer(tmp_path / "data", args=["--max-connections", "3"])
    port = server.start()
    try:
        with connect(port, dbname="quiver") as admin:
            admin.execute("CREATE USER limited CONNECTION LIMIT 1")
            admin.execute("GRANT OBSERVER ON PROJECT quiver TO limited")
            assert admin.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = 'limited'").fetchone() == (1,)
            with connect(port, user="limited", dbname="quiver"):
                with pytest.raises(psycopg.OperationalError, match='too many connections for role "limited"'):
                    connect(port, user="limited", dbname="quiver")
                with connect(port, dbname="quiver"):
                    with pytest.raises(psycopg.OperationalError, match="too many clients already"):
                        connect(port, dbname="quiver")
            # Closed connections free their places (once the server has seen them close).
            deadline = time.monotonic() + 10
            while True:
                try:
                    with connect(port, user="limited", dbname="quiver") as again:
                        assert again.execute("SELECT 1").fetchone() == (1,)
                    break
                except psycopg.OperationalError:
                    assert time.monotonic() < deadline, "a closed connection kept its place"
                    time.sleep(0.05)
    finally:
        server.stop()


def test_statement_timeout_cancels_a_long_query_with_57014(tenants):
    with connect(tenants) as conn:
        conn.execute("SET statement_timeout = '200ms'")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute("SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b")
        assert time.monotonic() - started < 10
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="statement_timeout"):
            conn.execute("SET statement_timeout = 'soon'")
        conn.execute("RESET statement_timeout")
        assert conn.execute("SELECT count(*) FROM tx WHERE id <= 40").fetchone() == (40,)
        assert conn.execute("SHOW is_superuser").fetchone() == ("on",)
    with connect(tenants, user="observer") as conn:
        assert conn.execute("SHOW is_superuser").fetchone() == ("off",)


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_an_oversized_message_disconnects_without_allocating_it(tmp_path):
    server = QuiverServer(tmp_path / "data")
    port = server.start()
    try:
        before = rss_kib(server.process.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            params = b"user\0quiver\0database\0quiver\0\0"
            raw.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
            received = b""
            while b"Z\0\0\0\x05I" not in received:
                chunk = raw.recv(4096)
                assert chunk, "the server closed during startup"
                received += chunk
            # A Query message that claims 2 GiB.
            raw.sendall(b"Q" + struct.pack("!I", 0x7FFFFFFF) + b"SELECT 1")
            raw.settimeout(10)
            while True:
                try:
                    if not raw.recv(4096):
                        break
                except ConnectionResetError:
                    break
        assert rss_kib(server.process.pid) - before < 100 * 1024
        with connect(port, dbname="quiver") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()


def test_remote_addresses_are_refused_without_a_password(tmp_path):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    port = free_port()
    server = QuiverServer(tmp_path / "data")
    server.port = port
    server.command = lambda: [server.binary, "serve", "--listen", f"0.0.0.0:{port}", "--data-dir", str(tmp_path / "data")]
    server.start()
    try:
        with pytest.raises(psycopg.OperationalError, match="only loopback connections are trusted"):
            psycopg.connect(host=address, port=port, user="quiver", dbname="quiver", sslmode="disable")
    finally:
        server.stop()


def _non_loopback_address():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address

"""Three `quiver serve` processes as one database: a replicated catalog, a replicated online store
and a shared offline store."""

import signal
import socket
import ssl
import subprocess
import threading
import time

import psycopg
import pytest

from conftest import QuiverServer, free_port, make_certificates


# Snapshots every 20 entries (the default is 5000): a node that misses more than that catches up by
# snapshot, which the tests below make happen.
SNAPSHOT_EVERY = 20


def node_args(tmp_path, node, raft_ports):
    peers = ",".join(f"{n}=127.0.0.1:{port}" for n, port in raft_ports.items())
    return ["--offline-store", str(tmp_path / "offline"), "--node-id", str(node),
            "--raft-listen", f"127.0.0.1:{raft_ports[node]}", "--peers", peers,
            "--raft-snapshot-every", str(SNAPSHOT_EVERY)]


QUIET = {"QUIVER_LOG": "error,openraft=off,buoyant_kernel=off,deltalake_core=off"}


def connect(server, **kwargs):
    return psycopg.connect(host="127.0.0.1", port=server.port, user="quiver", dbname="quiver",
                           autocommit=True, **kwargs)


def eventually(check, timeout=20.0, what="the cluster to settle"):
    """Retries `check` until it returns a true value without raising, or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (psycopg.Error, AssertionError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def kill(server):
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()


def restart(server):
    """Starts a node again on the same ports (its peers know it by its Raft address)."""
    server.start()


def nodes_view(server):
    with connect(server) as conn:
        return conn.execute(
            "SELECT node_id, role, sql_addr, is_this_node FROM quiver.cluster_nodes ORDER BY node_id"
        ).fetchall()


def leader_of(cluster, among):
    def find():
        for node in among:
            for node_id, role, _, _ in nodes_view(cluster[node]):
                if role == "leader" and node_id in among:
                    return node_id
        return None
    return eventually(find, what="a leader")


def start_cluster(tmp_path, extra_args=()):
    raft_ports = {node: free_port() for node in (1, 2, 3)}
    servers = {node: QuiverServer(tmp_path / f"node{node}", args=[*node_args(tmp_path, node, raft_ports), *extra_args],
                                  env=QUIET)
               for node in raft_ports}
    # Nodes start one after the other: none waits for the others to come up.
    for server in servers.values():
        server.start()
    # The first member bootstraps the catalog (the superuser) once the group has a quorum.
    eventually(lambda: connect(servers[1]).close() or True, what="the catalog's bootstrap")
    servers["tmp_path"] = tmp_path
    servers["raft_ports"] = raft_ports
    return servers


def stop_cluster(servers):
    for node, server in servers.items():
        if isinstance(node, int) and server.process and server.process.poll() is None:
            server.stop()


@pytest.fixture()
def cluster(tmp_path):
    servers = start_cluster(tmp_path)
    yield servers
    stop_cluster(servers)


def test_ddl_and_writes_on_one_node_are_visible_on_every_other(cluster):
    with connect(cluster[2]) as conn:
        conn.execute("CREATE FEATURE GROUP g (id BIGINT, x DOUBLE PRECISION, ts TIMESTAMP, "
                     "PRIMARY KEY (id), EVENT TIME ts)")
        conn.execute("INSERT INTO g VALUES (1, 2.5, '2026-01-01 00:00:00')")
    with connect(cluster[3]) as conn:
        assert conn.execute("SELECT id, x FROM g").fetchall() == [(1, 2.5)]
        conn.execute("CREATE USER alice")
    with connect(cluster[1]) as conn:
        assert conn.execute("SELECT rolname FROM pg_roles WHERE rolname = 'alice'").fetchall() == [("alice",)]
        assert conn.execute("SELECT name FROM quiver.feature_groups").fetchall() == [("g",)]
    # A node that has read the table already sees the next commit made elsewhere.
    with connect(cluster[2]) as conn:
        conn.execute("INSERT INTO g VALUES (2, 3.5, '2026-01-02 00:00:00')")
    for node in (1, 3):
        with connect(cluster[node]) as conn:
            assert conn.execute("SELECT id FROM g ORDER BY id").fetchall() == [(1,), (2,)]


def test_cluster_nodes_shows_every_member_and_the_leader(cluster):
    def registered():
        rows = nodes_view(cluster[1])
        return len(rows) == 3 and all(sql_addr for _, _, sql_addr, _ in rows) and rows
    rows = eventually(registered, what="every node's SQL address")
    assert [r[0] for r in rows] == [1, 2, 3]
    assert [r[2] for r in rows] == [f"127.0.0.1:{cluster[n].port}" for n in (1, 2, 3)]
    assert [r[3] for r in rows] == [True, False, False]
    assert sum(1 for r in rows if r[1] == "leader") == 1
    assert {r[1] for r in rows} <= {"leader", "follower"}
    with connect(cluster[2]) as conn:
        with pytest.raises(psycopg.errors.DuplicateObject, match="already a member"):
            conn.execute("ALTER CLUSTER ADD NODE 2 '127.0.0.1:1'")
        with pytest.raises(psycopg.errors.UndefinedObject, match="cluster node"):
            conn.execute("ALTER CLUSTER REMOVE NODE 9")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="not a Raft address"):
            conn.execute("ALTER CLUSTER ADD NODE 7 'nowhere'")
        conn.execute("CREATE USER bob")
        conn.execute("GRANT DATA OWNER ON PROJECT quiver TO bob")
    with psycopg.connect(host="127.0.0.1", port=cluster[3].port, user="bob", dbname="quiver",
                         autocommit=True) as bob:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            bob.execute("ALTER CLUSTER REMOVE NODE 1")
    # A login sees the users, grants and projects committed before it on any node (this node
    # catches up before it refuses); was once a race the test lost.
    with connect(cluster[3]) as conn:
        conn.execute("CREATE PROJECT fresh")
        conn.execute("CREATE USER carol")
        conn.execute("GRANT OBSERVER ON PROJECT fresh TO carol")
    with psycopg.connect(host="127.0.0.1", port=cluster[1].port, user="carol", dbname="fresh") as carol:
        assert carol.execute("SELECT current_user").fetchone() == ("carol",)

def test_concurrent_writers_on_two_nodes_lose_nothing(cluster):
    with connect(cluster[1]) as conn:
        conn.execute("CREATE TABLE events (id BIGINT, node INT)")
    errors = []

    def write(node, start):
        try:
            with connect(cluster[node]) as conn:
                for i in range(start, start + 30):
                    conn.execute("INSERT INTO events VALUES (%s, %s)", (i, node))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(node, node * 1000)) for node in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for node in (1, 2, 3):
        with connect(cluster[node]) as conn:
            assert conn.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone() == (60, 60)


def test_leader_loss_during_writes_loses_no_acknowledged_write_and_the_node_catches_up(cluster):
    with connect(cluster[1]) as conn:
        conn.execute("CREATE FEATURE GROUP acks (id BIGINT, n BIGINT, ts TIMESTAMP, PRIMARY KEY (id), "
                     "EVENT TIME ts) WITH (online = true)")
    # The node that leads the online store's data group (and usually the catalog's).
    leader = eventually(lambda: next((r[0] for r in online_roles(cluster[1]) if r[1] == "leader"), None),
                        what="a data group leader")
    writer_node = next(n for n in (1, 2, 3) if n != leader)
    acknowledged = []
    stop = threading.Event()

    def write():
        i = 0
        with connect(cluster[writer_node]) as conn:
            while not stop.is_set():
                try:
                    # A statement reads the catalog and the online store through their groups,
                    # and a write waits for a quorum of the data group: it may fail while a new
                    # leader is elected, never succeed without being durable.
                    conn.execute("INSERT INTO acks VALUES (%s, %s, now())", (i % 50, i))
                    acknowledged.append(i)
                except psycopg.errors.CannotConnectNow:
                    pass
                i += 1

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(1.0)
    started = time.monotonic()
    kill(cluster[leader])
    survivors = [n for n in (1, 2, 3) if n != leader]
    # New leaders take DDL and online writes within seconds.
    with connect(cluster[survivors[0]]) as conn:
        eventually(lambda: conn.execute("CREATE PROJECT after_failover") or True, what="a new leader")
        count = len(acknowledged)
        eventually(lambda: len(acknowledged) > count, what="online writes to resume")
    failover = time.monotonic() - started
    assert failover < 15, f"the cluster took {failover:.1f} s to accept writes again"
    time.sleep(1.0)
    stop.set()
    thread.join()
    assert len(acknowledged) > 10
    with connect(cluster[survivors[1]]) as conn:
        stored = [r[0] for r in conn.execute("SELECT n FROM acks").fetchall()]
    assert len(stored) == len(set(stored)), "a write was stored twice"
    assert set(acknowledged) <= set(stored), "an acknowledged write was lost"
    # Every survivor serves the latest acknowledged write of each key online.
    latest = {}
    for n in acknowledged:
        latest[n % 50] = n
    for node in survivors:
        with connect(cluster[node]) as conn:
            online = dict(conn.execute("SELECT id, n FROM online.acks").fetchall())
        assert all(online[key] >= n for key, n in latest.items()), f"node {node} lost an online write"
    # A write that failed may have committed offline (its outcome was unknown to the client);
    # the data group's reconciliation brings the online store to the offline store's latest.
    for node in survivors:
        with connect(cluster[node]) as conn:
            eventually(lambda: online_matches_offline(conn, "acks"), timeout=30,
                       what=f"node {node}'s online store to match the offline store")

    # While it was down, the catalog changed and more than a snapshot's worth of online writes
    # came (the log it missed is purged); restarted, it catches up by snapshot and serves both.
    with connect(cluster[survivors[0]]) as conn:
        conn.execute("CREATE TABLE made_while_down (x INT)")
        conn.execute("INSERT INTO made_while_down VALUES (7)")
        for i in range(3 * SNAPSHOT_EVERY):
            conn.execute("INSERT INTO acks VALUES (%s, %s, now())", (i % 7, 100000 + i))
        conn.execute("DELETE FROM acks WHERE id = 6")
    restart(cluster[leader])
    with connect(cluster[leader]) as conn:
        assert conn.execute("SELECT x FROM made_while_down").fetchall() == [(7,)]
        names = [r[0] for r in conn.execute("SHOW PROJECTS").fetchall()]
        assert "after_failover" in names
        assert online_matches_offline(conn, "acks")
        last_of_5 = max(i for i in range(3 * SNAPSHOT_EVERY) if i % 7 == 5)
        assert conn.execute("SELECT n FROM online.acks WHERE id = 5").fetchone() == (100000 + last_of_5,)
        assert conn.execute("SELECT count(*) FROM online.acks WHERE id = 6").fetchone() == (0,)


def online_roles(server):
    with connect(server) as conn:
        return conn.execute("SELECT node_id, online_role FROM quiver.cluster_nodes ORDER BY node_id").fetchall()


def online_matches_offline(conn, group):
    """Whether the online table holds exactly the latest row per key of the offline table."""
    online = conn.execute(f"SELECT id, n FROM online.{group} ORDER BY id").fetchall()
    offline = conn.execute(
        f"SELECT id, n FROM (SELECT id, n, row_number() OVER (PARTITION BY id ORDER BY ts DESC, n DESC) AS r "
        f"FROM {group}) WHERE r = 1 ORDER BY id").fetchall()
    return online == offline


def test_online_writes_on_one_node_are_served_by_every_node(cluster):
    with connect(cluster[2]) as conn:
        conn.execute("CREATE FEATURE GROUP g (id BIGINT, n BIGINT, ts TIMESTAMP, PRIMARY KEY (id), "
                     "EVENT TIME ts) WITH (online = true)")
    with connect(cluster[3]) as conn:
        conn.execute("INSERT INTO g VALUES (1, 10, '2026-01-02'), (2, 20, '2026-01-02')")
        # Late data: an older event time never replaces the newer row.
        conn.execute("INSERT INTO g VALUES (1, 11, '2026-01-01')")
    for node in (1, 2, 3):
        with connect(cluster[node]) as conn:
            # At once: a statement waits until its node has applied what was acknowledged.
            assert conn.execute("SELECT id, n FROM online.g ORDER BY id").fetchall() == [(1, 10), (2, 20)]
    # A write too big to travel in the log is read by every node from the shared offline store.
    with connect(cluster[1]) as conn:
        conn.execute("INSERT INTO g SELECT value, value * 10, TIMESTAMP '2026-01-03' "
                     "FROM generate_series(3, 30000)")
        conn.execute("DELETE FROM g WHERE id = 2")
    for node in (1, 2, 3):
        with connect(cluster[node]) as conn:
            assert conn.execute("SELECT count(*), sum(n) FROM online.g").fetchone() == (29999, 10 + 10 * sum(range(3, 30001)))
            assert conn.execute("SELECT n FROM online.g WHERE id = ANY(%s)", ([29999, 2],)).fetchall() == [(299990,)]
            assert online_matches_offline(conn, "g")
    # Off and on again: the online data goes from every node, then is built again everywhere.
    with connect(cluster[3]) as conn:
        conn.execute("ALTER FEATURE GROUP g SET (online = false)")
        conn.execute("INSERT INTO g VALUES (1, 12, '2026-01-04')")
    with connect(cluster[1]) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="is not online"):
            conn.execute("SELECT * FROM online.g")
        conn.execute("ALTER FEATURE GROUP g SET (online = true)")
    for node in (1, 2, 3):
        with connect(cluster[node]) as conn:
            assert conn.execute("SELECT n FROM online.g WHERE id = 1").fetchone() == (12,)
            assert conn.execute("SELECT online_rows FROM quiver.feature_groups WHERE name = 'g'").fetchone() == (29999,)
    with connect(cluster[2]) as conn:
        conn.execute("DROP FEATURE GROUP g")
        assert [r[1] for r in online_roles(cluster[2])].count("leader") == 1


def test_without_a_quorum_writes_fail_cleanly_and_a_fourth_node_joins(cluster):
    tmp_path, raft_ports = cluster["tmp_path"], cluster["raft_ports"]
    # A fourth node joins at runtime: started with the members it will join, then added.
    raft_ports[4] = free_port()
    fourth = QuiverServer(tmp_path / "node4", args=node_args(tmp_path, 4, raft_ports), env=QUIET)
    cluster[4] = fourth
    with connect(cluster[1]) as conn:
        conn.execute("CREATE TABLE kept (x INT)")
        conn.execute("INSERT INTO kept VALUES (1)")
    fourth.start()
    with connect(cluster[2]) as conn:
        conn.execute(f"ALTER CLUSTER ADD NODE 4 '127.0.0.1:{raft_ports[4]}'")
        assert [r[0] for r in conn.execute("SELECT node_id FROM quiver.cluster_nodes ORDER BY 1")] == [1, 2, 3, 4]
    with connect(fourth) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(1,)]
    # Back to three voters, then two of them down: no quorum.
    with connect(fourth) as conn:
        conn.execute("ALTER CLUSTER REMOVE NODE 4")
    kill(cluster[1])
    kill(cluster[2])
    with connect(cluster[3]) as conn:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.CannotConnectNow, match="quorum"):
            conn.execute("INSERT INTO kept VALUES (2)")
        assert time.monotonic() - started < 30, "the write did not fail within statement_timeout"
        with pytest.raises(psycopg.errors.CannotConnectNow):
            conn.execute("CREATE TABLE refused (x INT)")
    # A node back, a quorum again: the cluster takes writes and nothing refused was applied.
    restart(cluster[2])
    with connect(cluster[3]) as conn:
        eventually(lambda: conn.execute("INSERT INTO kept VALUES (3)") or True, what="a quorum")
        assert sorted(r[0] for r in conn.execute("SELECT x FROM kept").fetchall()) == [1, 3]
        assert conn.execute("SELECT count(*) FROM quiver.tables WHERE name = 'refused'").fetchone() == (0,)


def raft_handshake(port, ca, client_cert=None):
    """Opens TLS to a node's Raft port (presenting `client_cert`, a directory with server.crt and
    server.key, if given), sends the HTTP/2 preface and returns the first bytes the node answers."""
    context = ssl.create_default_context(cafile=str(ca / "ca.crt"))
    context.set_alpn_protocols(["h2"])
    if client_cert is not None:
        context.load_cert_chain(str(client_cert / "server.crt"), str(client_cert / "server.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            # An empty SETTINGS frame after the preface; the node answers with its own.
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            return tls.recv(9)


def test_nodes_talk_over_mutual_tls_and_refuse_other_certificates(tmp_path):
    ours = make_certificates(tmp_path / "ours", "Cluster")
    theirs = make_certificates(tmp_path / "theirs", "Other")
    servers = start_cluster(tmp_path, ["--raft-tls-cert", str(ours / "server.crt"), "--raft-tls-key",
                                       str(ours / "server.key"), "--raft-tls-ca", str(ours / "ca.crt")])
    try:
        with connect(servers[2]) as conn:
            conn.execute("CREATE FEATURE GROUP g (id BIGINT, n BIGINT, ts TIMESTAMP, PRIMARY KEY (id), "
                         "EVENT TIME ts) WITH (online = true)")
        with connect(servers[3]) as conn:
            conn.execute("INSERT INTO g VALUES (1, 10, '2026-01-01')")
        with connect(servers[1]) as conn:
            assert conn.execute("SELECT n FROM online.g WHERE id = 1").fetchone() == (10,)
        port = servers["raft_ports"][1]
        # A peer with a certificate the cluster's CA signed is served (HTTP/2 SETTINGS back).
        assert raft_handshake(port, ours, client_cert=ours)[3] == 0x04
        # Without a certificate, or with another CA's, the node hangs up.
        for client_cert in (None, theirs):
            with pytest.raises((ssl.SSLError, ConnectionResetError, AssertionError)):
                assert raft_handshake(port, ours, client_cert=client_cert) != b""
        # Plaintext gets nothing either.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            try:
                answer = raw.recv(64)
            except ConnectionResetError:
                answer = b""
            assert not answer.startswith(b"\x00\x00")
    finally:
        stop_cluster(servers)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--raft-tls-cert", "CERT", "--raft-tls-key", "KEY"], "--raft-tls-cert, --raft-tls-key and --raft-tls-ca together"),
        (["--raft-tls-cert", "/nonexistent.crt", "--raft-tls-key", "KEY", "--raft-tls-ca", "CA"], "--raft-tls-cert /nonexistent.crt"),
        (["--raft-tls-cert", "CERT", "--raft-tls-key", "CAKEY", "--raft-tls-ca", "CA"], "do not make a usable pair"),
        (["--raft-tls-cert", "CERT", "--raft-tls-key", "KEY", "--raft-tls-ca", "KEY"], "--raft-tls-ca"),
    ],
)
def test_a_bad_cluster_tls_configuration_stops_the_node_at_start(tmp_path, args, message):
    certificates = make_certificates(tmp_path / "tls", "Cluster")
    files = {"CERT": certificates / "server.crt", "KEY": certificates / "server.key",
             "CAKEY": certificates / "ca.key", "CA": certificates / "ca.crt"}
    args = [str(files.get(a, a)) for a in args]
    raft_port = free_port()
    server = QuiverServer(tmp_path / "data", args=[*node_args(tmp_path, 1, {1: raft_port}), *args], env=QUIET)
    out = subprocess.run(server.command(), env=server.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert message in out.stderr
    assert not (tmp_path / "data").exists(), "a misconfigured node must not touch its data directory"


"""Three `quiver serve` processes as one database: a replicated catalog and a shared offline store."""

import signal
import subprocess

import psycopg
import pytest

from conftest import QuiverServer, free_port, wait_for_port


@pytest.fixture()
def cluster(tmp_path):
    raft_ports = {node: free_port() for node in (1, 2, 3)}
    peers = ",".join(f"{node}=127.0.0.1:{port}" for node, port in raft_ports.items())
    servers = {}
    for node, port in raft_ports.items():
        servers[node] = QuiverServer(
            tmp_path / f"node{node}",
            args=["--offline-store", str(tmp_path / "offline"), "--node-id", str(node),
                  "--raft-listen", f"127.0.0.1:{port}", "--peers", peers],
        )
    # The first member waits for a quorum to bootstrap the catalog: start the others alongside.
    for server in servers.values():
        server.process = subprocess.Popen(server.command(), env=server.env)
    for server in servers.values():
        wait_for_port(server.port, server.process, "quiver")
    yield servers
    for server in servers.values():
        if server.process.poll() is None:
            server.stop()


def connect(server):
    return psycopg.connect(host="127.0.0.1", port=server.port, user="quiver", dbname="quiver", autocommit=True)


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


def test_the_catalog_survives_losing_any_one_node(cluster):
    with connect(cluster[3]) as conn:
        conn.execute("CREATE PROJECT before_loss")
    cluster[1].process.send_signal(signal.SIGKILL)
    cluster[1].process.wait()
    with connect(cluster[2]) as conn:
        conn.execute("CREATE PROJECT after_loss")
    with connect(cluster[3]) as conn:
        names = [r[0] for r in conn.execute("SHOW PROJECTS").fetchall()]
        assert {"before_loss", "after_loss"} <= set(names)

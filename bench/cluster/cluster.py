"""Three Quiver nodes against one standalone node, on the same machine and the same data.

- Writes: one CSV (a bigint key, a timestamp, 10 doubles) loaded by COPY into an online feature
  group; rows/s of the standalone node, and of a cluster node (whose write waits for the data
  group's quorum and is applied by all three nodes).
- Lookups: pgbench with a prepared single-key SELECT on online.<group> at 8 connections against
  the standalone node and against each cluster node (QPS); every node serves every key.
- Failover: a writer inserts into an online group through a follower; the leader of the data
  group is killed (SIGKILL) and the time to the writer's first accepted write is measured; the
  node is restarted and catches up before the next round. Median of five.
"""

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import threading
import time

import psycopg

from csv_load import copy_csv, make_csv

DOUBLES = ", ".join(f"f{i} DOUBLE PRECISION" for i in range(10))
GROUP = f"CREATE FEATURE GROUP g (key BIGINT, ts TIMESTAMP, {DOUBLES}, PRIMARY KEY (key), EVENT TIME ts) WITH (online = true)"
QUIET = {**os.environ, "QUIVER_LOG": "error,openraft=off,buoyant_kernel=off,deltalake_core=off"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, binary, data_dir, args):
        self.port = free_port()
        self.command = [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", data_dir,
                        "--online-cache-mb", "1024", *args]
        self.process = None

    def launch(self):
        self.process = subprocess.Popen(self.command, env=QUIET)

    def start(self):
        self.launch()
        self.wait_ready()

    def wait_ready(self):
        """Returns once a session opens (on a cluster node: once the cluster has a quorum)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(host="127.0.0.1", port=self.port, user="quiver", dbname="quiver").close()
                return
            except psycopg.Error:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"node on {self.port} did not start")
                time.sleep(0.1)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def connect(self):
        return psycopg.connect(host="127.0.0.1", port=self.port, user="quiver", dbname="quiver", autocommit=True)


def copy_rows_per_second(node: Node, csv_path: str, rows: int) -> float:
    with node.connect() as conn:
        conn.execute(GROUP)
        elapsed = copy_csv(conn, "g", csv_path)
        count = conn.execute("SELECT count(*) FROM online.g").fetchone()[0]
        assert count == rows, f"node {node.port} serves {count} keys online, expected {rows}"
    return rows / elapsed


def lookup_qps(node: Node, rows: int, seconds: int, work: str, clients: int = 8) -> float:
    script = os.path.join(work, "lookup.sql")
    with open(script, "w") as f:
        f.write(f"\\set k random(0, {rows - 1})\nSELECT * FROM online.g WHERE key = :k;\n")
    out = subprocess.run(
        ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", script,
         "-h", "127.0.0.1", "-p", str(node.port), "-U", "quiver", "quiver"],
        capture_output=True, text=True, check=True)
    return float(re.search(r"tps = ([0-9.]+)", out.stdout).group(1))


def data_leader(nodes: dict) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for node in nodes.values():
            try:
                with node.connect() as conn:
                    for node_id, role in conn.execute("SELECT node_id, online_role FROM quiver.cluster_nodes"):
                        if role == "leader" and nodes[node_id].process.poll() is None:
                            return node_id
            except psycopg.Error:
                pass
        time.sleep(0.1)
    raise RuntimeError("no data group leader")


def failover_seconds(nodes: dict) -> float:
    """Kills the data group's leader while a follower takes writes; the time from the kill to
    the first write accepted after it. The node is restarted and caught up afterwards."""
    leader = data_leader(nodes)
    writer = next(n for n in nodes if n != leader)
    accepted = []
    stop = threading.Event()

    def write():
        i = 0
        with nodes[writer].connect() as conn:
            while not stop.is_set():
                try:
                    conn.execute("INSERT INTO f VALUES (%s, now())", (i,))
                    accepted.append(time.monotonic())
                except psycopg.Error:
                    pass
                i += 1

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(1.0)
    killed = time.monotonic()
    nodes[leader].kill()
    while not any(t > killed for t in accepted) and time.monotonic() - killed < 60:
        time.sleep(0.01)
    stop.set()
    thread.join()
    first = next((t for t in accepted if t > killed), None)
    nodes[leader].start()
    with nodes[leader].connect() as conn:
        conn.execute("SELECT count(*) FROM online.f").fetchone()
    if first is None:
        raise RuntimeError("no write was accepted within 60 s of the leader's loss")
    return first - killed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiver", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--seconds", type=int, required=True)
    args = parser.parse_args()
    work = args.work

    csv_path = os.path.join(work, "rows.csv")
    make_csv(csv_path, args.rows)
    print(f"data: {args.rows:,} rows x 12 columns, {os.path.getsize(csv_path) / 1e6:.0f} MB of CSV; "
          f"lookups for {args.seconds} s at 8 connections")

    standalone = Node(args.quiver, os.path.join(work, "standalone"), [])
    standalone.start()
    try:
        alone_rows = copy_rows_per_second(standalone, csv_path, args.rows)
        alone_qps = lookup_qps(standalone, args.rows, args.seconds, work)
    finally:
        standalone.stop()

    raft_ports = {n: free_port() for n in (1, 2, 3)}
    peers = ",".join(f"{n}=127.0.0.1:{p}" for n, p in raft_ports.items())
    nodes = {n: Node(args.quiver, os.path.join(work, f"node{n}"),
                     ["--offline-store", os.path.join(work, "shared-offline"), "--node-id", str(n),
                      "--raft-listen", f"127.0.0.1:{raft_ports[n]}", "--peers", peers])
             for n in raft_ports}
    try:
        for node in nodes.values():
            node.launch()
        for node in nodes.values():
            node.wait_ready()
        # Writes through a node that does not lead the data group: the slowest path.
        writer = next(n for n in nodes if n != data_leader(nodes))
        cluster_rows = copy_rows_per_second(nodes[writer], csv_path, args.rows)
        cluster_qps = {n: lookup_qps(node, args.rows, args.seconds, work) for n, node in nodes.items()}
        with nodes[1].connect() as conn:
            conn.execute("CREATE FEATURE GROUP f (id BIGINT, ts TIMESTAMP, PRIMARY KEY (id), EVENT TIME ts) "
                         "WITH (online = true)")
        failovers = [failover_seconds(nodes) for _ in range(5)]
    finally:
        for node in nodes.values():
            node.stop()

    print(f"{'':<28}{'standalone':>14}{'cluster':>14}{'ratio':>8}")
    print(f"{'COPY rows/s':<28}{alone_rows:>14,.0f}{cluster_rows:>14,.0f}{cluster_rows / alone_rows:>8.2f}")
    for n, qps in cluster_qps.items():
        print(f"{f'lookup QPS, node {n}':<28}{alone_qps:>14,.0f}{qps:>14,.0f}{qps / alone_qps:>8.2f}")
    print(f"failover, leader kill to first accepted write: median {statistics.median(failovers):.2f} s "
          f"(runs: {', '.join(f'{f:.2f}' for f in failovers)})")


if __name__ == "__main__":
    main()

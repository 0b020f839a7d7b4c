"""Starts `quiver serve` on a fresh data directory for the client tests."""

import os
import socket
import subprocess
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"{what} did not start")
            time.sleep(0.05)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory, name):
    """A CA and a server certificate it signs, for localhost and 127.0.0.1."""
    directory.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name} CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=directory)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr", cwd=directory)
    (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "ext.cnf", "-out", "server.crt", cwd=directory)
    return directory


class QuiverServer:
    """One `quiver serve` process; `start` and `stop` may be called again to restart it."""

    def __init__(self, data_dir, args=(), env=None):
        self.binary = os.environ.get("QUIVER_BIN")
        if not self.binary:
            pytest.fail("set QUIVER_BIN to the quiver binary")
        self.data_dir = data_dir
        self.args = list(args)
        self.env = {**os.environ, "QUIVER_LOG": "warn,buoyant_kernel=error,deltalake_core=error", **(env or {})}
        self.port = free_port()
        self.process = None

    def command(self):
        return [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir), *self.args]

    def start(self):
        self.process = subprocess.Popen(self.command(), env=self.env)
        wait_for_port(self.port, self.process, "quiver")
        return self.port

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail("quiver did not stop on SIGTERM")
        assert self.process.returncode == 0, f"quiver exited with {self.process.returncode} on SIGTERM"


@pytest.fixture()
def quiver(tmp_path):
    """A running server; yields its port."""
    server = QuiverServer(tmp_path / "data")
    yield server.start()
    server.stop()

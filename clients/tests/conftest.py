"""Starts a `quiver serve` on a fresh data directory for the client tests."""

import os
import socket
import subprocess
import time

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def quiver(tmp_path):
    """A running server; yields its port."""
    binary = os.environ.get("QUIVER_BIN")
    if not binary:
        pytest.fail("set QUIVER_BIN to the quiver binary")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")],
        env={**os.environ, "QUIVER_LOG": "warn,buoyant_kernel=error,deltalake_core=error"},
    )
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("quiver did not start")
            time.sleep(0.05)
    yield port
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("quiver did not stop on SIGTERM")
    assert process.returncode == 0, f"quiver exited with {process.returncode} on SIGTERM"

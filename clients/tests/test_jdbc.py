"""pgjdbc from Debian's libpostgresql-jdbc-java, through a small Java program compiled with javac."""

import pathlib
import subprocess

JAR = "/usr/share/java/postgresql.jar"
SOURCE = pathlib.Path(__file__).parent / "jdbc" / "JdbcClient.java"


def test_jdbc_metadata_prepared_statements_and_fetch_size(quiver, tmp_path):
    compiled = subprocess.run(
        ["javac", "-cp", JAR, "-d", str(tmp_path), str(SOURCE)],
        capture_output=True, text=True, timeout=300,
    )
    assert compiled.returncode == 0, compiled.stderr
    result = subprocess.run(
        ["java", "-cp", f"{JAR}:{tmp_path}", "JdbcClient", str(quiver)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok"

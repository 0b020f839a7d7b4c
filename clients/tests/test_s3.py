"""The offline store on S3 (`--offline-store s3://bucket/prefix`), against moto's S3 server."""

import os
import subprocess
import sys

import boto3
import psycopg
import pytest

from conftest import QuiverServer, free_port, wait_for_port

BUCKET = "quiver-offline"


@pytest.fixture()
def s3():
    """A moto S3 server with one empty bucket; yields (endpoint, boto3 client)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process, "moto")
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    process.terminate()
    process.wait(timeout=10)


def s3_env(endpoint):
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }


def keys(client, prefix):
    response = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in response.get("Contents", []))


def connect(port):
    return psycopg.connect(host="127.0.0.1", port=port, user="quiver", dbname="quiver", autocommit=True)


def test_feature_group_lives_in_s3_and_survives_a_restart(s3, tmp_path):
    endpoint, client = s3
    server = QuiverServer(tmp_path / "data", ["--offline-store", f"s3://{BUCKET}/warehouse"], s3_env(endpoint))
    port = server.start()
    with connect(port) as conn:
        conn.execute(
            "CREATE FEATURE GROUP clicks (user_id BIGINT, clicks INT, ts TIMESTAMP, "
            "PRIMARY KEY (user_id), EVENT TIME ts) WITH (partition_by = 'day(ts)')"
        )
        conn.execute("INSERT INTO clicks VALUES (1, 10, '2026-01-01 10:00:00'), (2, 20, '2026-01-02 10:00:00')")
        with conn.cursor() as cur:
            with cur.copy("COPY clicks FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write("3,30,2026-01-02 11:00:00\n")
        oid = conn.execute(
            "SELECT oid FROM quiver.feature_groups WHERE name = 'clicks'"
        ).fetchone()[0]
        assert conn.execute("SELECT sum(clicks) FROM clicks WHERE ts >= '2026-01-02'").fetchone() == (50,)
    stored = keys(client, f"warehouse/{oid}/")
    assert f"warehouse/{oid}/_delta_log/00000000000000000000.json" in stored
    assert f"warehouse/{oid}/_delta_log/00000000000000000002.json" in stored
    assert any(k.endswith(".parquet") and "__quiver_partition=2026-01-02" in k for k in stored), stored
    assert not os.path.exists(tmp_path / "data" / "offline"), "the offline store was written locally"

    server.stop()
    port = server.start()
    with connect(port) as conn:
        assert conn.execute("SELECT user_id, clicks FROM clicks ORDER BY user_id").fetchall() == [(1, 10), (2, 20), (3, 30)]
        conn.execute("DROP FEATURE GROUP clicks")
    assert keys(client, f"warehouse/{oid}/") == []
    server.stop()


def test_unreachable_or_unsupported_store_is_a_clear_startup_error(s3, tmp_path):
    endpoint, _ = s3
    for location, expected in [
        ("s3://no-such-bucket/x", "s3://no-such-bucket/x/ is not reachable"),
        ("ftp://host/x", 'unsupported scheme "ftp"'),
    ]:
        server = QuiverServer(tmp_path / "data", ["--offline-store", location], s3_env(endpoint))
        result = subprocess.run(server.command(), env=server.env, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert expected in result.stderr, result.stderr


def test_a_training_dataset_is_written_to_s3_and_read_back(s3, tmp_path):
    endpoint, client = s3
    server = QuiverServer(tmp_path / "data", env=s3_env(endpoint))
    port = server.start()
    try:
        with connect(port) as conn:
            conn.execute("CREATE FEATURE GROUP g (id BIGINT, x DOUBLE PRECISION, PRIMARY KEY (id))")
            conn.execute("INSERT INTO g SELECT value, value * 0.5 FROM generate_series(1, 1000)")
            conn.execute(
                f"CREATE TRAINING DATASET td AS SELECT id, x FROM g FORMAT parquet "
                f"SPLIT (train = 0.8, test = 0.2) SEED 3 LOCATION 's3://{BUCKET}/datasets/td'"
            )
            stored = keys(client, "datasets/td/")
            assert "datasets/td/train/part-00000.parquet" in stored, stored
            assert "datasets/td/test/part-00000.parquet" in stored, stored
            train = conn.execute("SELECT count(*), sum(x) FROM training_dataset('td', 1, 'train')").fetchone()
            test = conn.execute("SELECT count(*), sum(x) FROM training_dataset('td', 1, 'test')").fetchone()
            assert train[0] + test[0] == 1000 and train[1] + test[1] == 0.5 * 1000 * 1001 / 2
            # The location holds a dataset now: another one there is refused, and nothing is written.
            with pytest.raises(psycopg.errors.DuplicateTable):
                conn.execute(f"CREATE TRAINING DATASET td2 AS SELECT id FROM g FORMAT csv LOCATION 's3://{BUCKET}/datasets/td'")
            conn.execute("DROP TRAINING DATASET td")
            assert keys(client, "datasets/td/") == []
    finally:
        server.stop()


def test_a_model_artifact_lives_beside_the_offline_store_on_s3(s3, tmp_path):
    endpoint, client = s3
    server = QuiverServer(tmp_path / "data", ["--offline-store", f"s3://{BUCKET}/warehouse"], s3_env(endpoint))
    port = server.start()
    try:
        with connect(port) as conn:
            conn.execute("CREATE FEATURE GROUP g (id BIGINT, x DOUBLE PRECISION, y DOUBLE PRECISION, PRIMARY KEY (id))")
            conn.execute("INSERT INTO g SELECT value, value * 0.5, value * 1.5 + 2 FROM generate_series(1, 500)")
            conn.execute("CREATE TRAINING DATASET td AS SELECT x, y FROM g FORMAT parquet SPLIT (train = 0.8, test = 0.2)")
            conn.execute("SELECT * FROM train_model('lin', 'td', 1, 'linear_regression', '{\"label\": \"y\"}')")
            (artifact,) = conn.execute("SELECT artifact FROM quiver.models").fetchone()
            assert artifact.startswith(f"s3://{BUCKET}/warehouse/models/quiver/lin/1-"), artifact
            assert len(keys(client, "warehouse/models/")) == 1
        # A restarted server reads the artifact back from S3 to score.
        server.stop()
        port = server.start()
        with connect(port) as conn:
            (predicted,) = conn.execute("SELECT predict('lin', 1, 10.0)").fetchone()
            assert abs(predicted - 32.0) < 1e-9  # y = 3x + 2
            conn.execute("DROP MODEL lin")
            assert keys(client, "warehouse/models/") == []
    finally:
        server.stop()

"""Training dataset files read back by each format's own ecosystem: pyarrow for parquet and Arrow
IPC, pandas for csv, numpy for npy, h5py for hdf5, the `tfrecord` package (TensorFlow's Example
protobuf) for tfrecords. Values must equal the rows of the query the dataset was written from."""

import datetime
import glob
import json
import math
import os
import struct

import crc32c
import h5py
import numpy
import pandas
import psycopg
import pyarrow.ipc
import pyarrow.parquet
import pytest
from tfrecord.reader import tfrecord_loader

ROWS = 300


@pytest.fixture()
def conn(quiver):
    with psycopg.connect(host="127.0.0.1", port=quiver, user="quiver", dbname="quiver", autocommit=True) as conn:
        conn.execute(
            "CREATE FEATURE GROUP tx (id BIGINT, x DOUBLE PRECISION, n INTEGER, cat TEXT, emb REAL[], "
            "flag BOOLEAN, ts TIMESTAMP NOT NULL, PRIMARY KEY (id), EVENT TIME ts)"
        )
        conn.execute(
            f"""INSERT INTO tx SELECT v, CASE WHEN v % 10 = 0 THEN NULL ELSE v * 0.25 - 7 END, v % 7 - 3,
                   CASE WHEN v % 3 = 0 THEN 'red' WHEN v % 3 = 1 THEN 'green' ELSE 'blue' END,
                   make_array(CAST(v AS REAL) / 8, CAST(-v AS REAL)), v % 2 = 0,
                   to_timestamp_seconds(1767225600 + v * 3600)
                FROM generate_series(1, {ROWS}) AS g(v)"""
        )
        yield conn


def source_rows(conn, columns):
    return conn.execute(f"SELECT {columns} FROM tx ORDER BY id").fetchall()


def create(conn, name, query, fmt, location, extra=""):
    conn.execute(f"CREATE TRAINING DATASET {name} AS {query} FORMAT {fmt} {extra} LOCATION 'file://{location}'")


def files(location, split, pattern):
    found = sorted(glob.glob(os.path.join(location, split, pattern)))
    assert found, f"no {pattern} in {location}/{split}"
    return found


def test_parquet_and_arrow_read_by_pyarrow(conn, tmp_path):
    columns = "id, x, n, cat, emb, flag, ts"
    expected = source_rows(conn, columns)
    for fmt, read in [
        ("parquet", lambda path: pyarrow.parquet.read_table(path)),
        ("arrow", lambda path: pyarrow.ipc.open_file(path).read_all()),
    ]:
        location = tmp_path / fmt
        create(conn, f"td_{fmt}", f"SELECT {columns} FROM tx", fmt, location)
        table = pyarrow.concat_tables([read(f) for f in files(location, "train", f"*.{fmt}")])
        got = sorted(table.to_pylist(), key=lambda r: r["id"])
        assert len(got) == ROWS
        for row, want in zip(got, expected):
            assert (row["id"], row["n"], row["cat"], row["flag"], row["ts"]) == (
                want[0], want[2], want[3], want[5], want[6]), fmt
            assert row["x"] == want[1], fmt
            assert row["emb"] == pytest.approx(want[4]), fmt


def test_csv_read_by_pandas(conn, tmp_path):
    columns = "id, x, n, cat, flag, ts"
    expected = source_rows(conn, columns)
    location = tmp_path / "csv"
    create(conn, "td_csv", f"SELECT {columns} FROM tx", "csv", location)
    frame = pandas.concat(pandas.read_csv(f) for f in files(location, "train", "*.csv"))
    frame = frame.sort_values("id").reset_index(drop=True)
    assert list(frame.columns) == ["id", "x", "n", "cat", "flag", "ts"]
    assert len(frame) == ROWS
    for (_, row), want in zip(frame.iterrows(), expected):
        assert row["id"] == want[0] and row["n"] == want[2] and row["cat"] == want[3]
        assert bool(row["flag"]) == want[4]
        assert (math.isnan(row["x"]) and want[1] is None) or row["x"] == want[1]
        assert pandas.Timestamp(row["ts"]).to_pydatetime() == want[5]


def test_npy_read_by_numpy_with_column_names(conn, tmp_path):
    columns = "id, x, n, flag, ts"
    expected = source_rows(conn, columns)
    location = tmp_path / "npy"
    create(conn, "td_npy", f"SELECT {columns} FROM tx", "npy", location)
    [path] = files(location, "train", "*.npy")
    array = numpy.load(path)
    assert array.dtype == numpy.float64 and array.shape == (ROWS, 5)
    meta = json.loads((location / "train" / "columns.json").read_text())
    assert meta == {"columns": ["id", "x", "n", "flag", "ts"], "dtype": "<f8"}
    array = array[numpy.argsort(array[:, 0])]
    epoch = datetime.datetime(1970, 1, 1)
    for got, want in zip(array, expected):
        assert got[0] == want[0] and got[2] == want[2] and got[3] == float(want[3])
        assert (math.isnan(got[1]) and want[1] is None) or got[1] == want[1]
        # Timestamps are microseconds since the epoch.
        assert got[4] == (want[4] - epoch) / datetime.timedelta(microseconds=1)
    # All-integer columns make an int64 array; text has no place in one.
    create(conn, "td_npy_int", "SELECT id, n FROM tx", "npy", tmp_path / "npy_int")
    [path] = files(tmp_path / "npy_int", "train", "*.npy")
    assert numpy.load(path).dtype == numpy.int64
    with pytest.raises(psycopg.errors.FeatureNotSupported, match='column "cat"'):
        create(conn, "td_npy_text", "SELECT id, cat FROM tx", "npy", tmp_path / "npy_text")
    assert not (tmp_path / "npy_text").exists()


def test_hdf5_read_by_h5py(conn, tmp_path):
    columns = "id, x, n, cat, flag, ts"
    expected = source_rows(conn, columns)
    location = tmp_path / "hdf5"
    create(conn, "td_h5", f"SELECT {columns} FROM tx", "hdf5", location, "SPLIT (train = 0.6, test = 0.4) SEED 9")
    got = {}
    for split in ("train", "test"):
        [path] = files(location, split, "*.h5")
        with h5py.File(path, "r") as f:
            assert list(f.attrs["columns"]) == ["id", "x", "n", "cat", "flag", "ts"]
            assert f["x"].dtype == numpy.float64 and f["n"].dtype == numpy.int64
            for i, key in enumerate(f["id"][:]):
                got[int(key)] = (f["x"][i], f["n"][i], f["cat"][i].decode(), f["flag"][i], f["ts"][i])
    assert len(got) == ROWS
    epoch = datetime.datetime(1970, 1, 1)
    for want in expected:
        x, n, cat, flag, ts = got[want[0]]
        assert (math.isnan(x) and want[1] is None) or x == want[1]
        assert (n, cat, flag) == (want[2], want[3], int(want[4]))
        assert ts == (want[5] - epoch) // datetime.timedelta(microseconds=1)
    # Arrays have no place in a dataset of scalars; NULL text has no representation.
    with pytest.raises(psycopg.errors.FeatureNotSupported, match='column "emb"'):
        create(conn, "td_h5_emb", "SELECT id, emb FROM tx", "hdf5", tmp_path / "h5_emb")
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match='column "c"'):
        create(conn, "td_h5_null", "SELECT id, CASE WHEN id > 5 THEN cat END AS c FROM tx", "hdf5", tmp_path / "h5_null")
    assert not (tmp_path / "h5_null").exists()
    assert conn.execute("SELECT count(*) FROM quiver.training_datasets WHERE name LIKE 'td_h5_%'").fetchone()[0] == 0


def masked_crc(data):
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_tfrecords_read_as_tf_train_examples(conn, tmp_path):
    columns = "id, x, n, cat, emb, flag, ts"
    expected = source_rows(conn, columns)
    location = tmp_path / "tfrecords"
    create(conn, "td_tf", f"SELECT {columns} FROM tx", "tfrecords", location)
    [path] = files(location, "train", "*.tfrecord")
    # The framing TensorFlow checks: length, masked crc32c of the length, data, masked crc32c.
    data = open(path, "rb").read()
    offset = 0
    records = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        (length_crc,) = struct.unpack_from("<I", data, offset + 8)
        assert length_crc == masked_crc(data[offset:offset + 8])
        body = data[offset + 12:offset + 12 + length]
        (body_crc,) = struct.unpack_from("<I", data, offset + 12 + length)
        assert body_crc == masked_crc(body)
        offset += 16 + length
        records += 1
    assert records == ROWS
    description = {"id": "int", "x": "float", "n": "int", "cat": "byte", "emb": "float", "flag": "int", "ts": "int"}
    examples = sorted(tfrecord_loader(path, None, description), key=lambda e: int(e["id"][0]))
    epoch = datetime.datetime(1970, 1, 1)
    for example, want in zip(examples, expected):
        assert list(example["id"]) == [want[0]]
        if want[1] is None:
            assert len(example["x"]) == 0  # NULL is an empty list, TensorFlow's missing value
        else:
            assert example["x"][0] == pytest.approx(want[1])
        assert list(example["n"]) == [want[2]]
        assert bytes(example["cat"]).decode() == want[3]
        assert list(example["emb"]) == pytest.approx(want[4])
        assert list(example["flag"]) == [int(want[5])]
        assert list(example["ts"]) == [(want[6] - epoch) // datetime.timedelta(microseconds=1)]
    # The same records gzip-compressed, as TFRecordDataset(compression_type='GZIP') reads them.
    create(conn, "td_tf_gz", f"SELECT {columns} FROM tx", "tfrecords (compression = 'gzip')", tmp_path / "gz")
    [path] = files(tmp_path / "gz", "train", "*.tfrecord.gz")
    zipped = sorted(tfrecord_loader(path, None, description, compression_type="gzip"), key=lambda e: int(e["id"][0]))
    assert [list(e["n"]) for e in zipped] == [list(e["n"]) for e in examples]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="format parquet takes no option"):
        create(conn, "td_pq_gz", "SELECT id FROM tx", "parquet (compression = 'gzip')", tmp_path / "pq_gz")


def split_ids(location, split):
    return set(numpy.load(files(location, split, "*.npy")[0])[:, 0].astype(int))


def test_random_splits_are_disjoint_complete_and_repeatable(conn, tmp_path):
    query = "SELECT id, x FROM tx"
    extra = "SPLIT (train = 0.7, test = 0.3) SEED 11"
    create(conn, "s1", query, "npy", tmp_path / "s1", extra)
    create(conn, "s2", query, "npy", tmp_path / "s2", extra)
    create(conn, "s3", query, "npy", tmp_path / "s3", "SPLIT (train = 0.7, test = 0.3) SEED 12")
    train, test = split_ids(tmp_path / "s1", "train"), split_ids(tmp_path / "s1", "test")
    assert not train & test and len(train | test) == ROWS
    assert 0.55 < len(train) / ROWS < 0.85
    assert split_ids(tmp_path / "s2", "train") == train
    assert split_ids(tmp_path / "s3", "train") != train


def test_transformations_are_fitted_on_the_train_split(conn, tmp_path):
    conn.execute(
        "CREATE FEATURE VIEW fv AS SELECT id, x, cat, flag FROM tx WHERE x IS NOT NULL "
        "WITH (label = 'flag', transform = 'x:standard_scaler, cat:one_hot')"
    )
    conn.execute(
        f"CREATE TRAINING DATASET fv_td FROM FEATURE VIEW fv FORMAT npy SPLIT (train = 0.8, test = 0.2) SEED 5 "
        f"LOCATION 'file://{tmp_path / 'fv'}'"
    )
    meta = json.loads((tmp_path / "fv" / "train" / "columns.json").read_text())
    assert meta["columns"] == ["id", "x", "cat_blue", "cat_green", "cat_red", "flag"]
    train = numpy.load(files(tmp_path / "fv", "train", "*.npy")[0])
    test = numpy.load(files(tmp_path / "fv", "test", "*.npy")[0])
    assert abs(train[:, 1].mean()) < 1e-9 and abs(train[:, 1].std() - 1) < 1e-9
    assert (train[:, 2:5].sum(axis=1) == 1).all() and (test[:, 2:5].sum(axis=1) == 1).all()
    # The test split is scaled with the train split's mean and deviation.
    source = dict(conn.execute("SELECT id, x FROM tx WHERE x IS NOT NULL").fetchall())
    raw_train = numpy.array([source[int(i)] for i in train[:, 0]])
    mean, std = raw_train.mean(), raw_train.std()
    for row in test:
        assert row[1] == pytest.approx((source[int(row[0])] - mean) / std)
    fitted = conn.execute("SELECT transformed FROM quiver.training_datasets WHERE name = 'fv_td'").fetchone()[0]
    assert fitted == "x, cat"


def test_a_long_write_reports_progress_and_a_cancel_leaves_nothing(quiver, tmp_path):
    import threading

    notices = []
    progressed = threading.Event()

    def on_notice(diagnostic):
        notices.append(diagnostic.message_primary)
        if "rows written" in diagnostic.message_primary:
            progressed.set()

    location = tmp_path / "big"
    with psycopg.connect(host="127.0.0.1", port=quiver, user="quiver", dbname="quiver", autocommit=True) as conn:
        conn.add_notice_handler(on_notice)
        canceller = threading.Thread(target=lambda: progressed.wait(120) and conn.cancel())
        canceller.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(
                "CREATE TRAINING DATASET big AS SELECT v, v * 0.5 AS x FROM generate_series(1, 200000000) AS g(v) "
                f"FORMAT csv LOCATION 'file://{location}'"
            )
        canceller.join()
        assert any("rows written" in n for n in notices), notices
        assert conn.execute("SELECT count(*) FROM quiver.training_datasets").fetchone()[0] == 0
    assert not location.exists() or not any(location.iterdir())
    staging = tmp_path / "data" / "staging"
    assert not any(staging.iterdir()), list(staging.iterdir())


def test_feature_vectors_with_parameters(quiver):
    with psycopg.connect(host="127.0.0.1", port=quiver, user="quiver", dbname="quiver", autocommit=True) as conn:
        conn.execute("CREATE FEATURE GROUP g (cc BIGINT, amount DOUBLE PRECISION, ts TIMESTAMP NOT NULL, "
                     "PRIMARY KEY (cc), EVENT TIME ts) WITH (online = true)")
        conn.execute("INSERT INTO g VALUES (1, 10.0, '2026-01-01 00:00:00'), (2, 20.0, '2026-01-02 00:00:00')")
        conn.execute("CREATE TABLE spine (cc BIGINT, ts TIMESTAMP, y BOOLEAN)")
        conn.execute("CREATE FEATURE VIEW joined AS SELECT s.cc, g.amount, s.y FROM spine s "
                     "ASOF JOIN g MATCH_CONDITION (s.ts >= g.ts) ON s.cc = g.cc WITH (label = 'y')")
        conn.execute("CREATE FEATURE VIEW direct AS SELECT cc, amount FROM g")
        for view, missing in (("joined", [(3, None)]), ("direct", [])):
            # A prepared serving statement: the key is a parameter, executed again and again.
            for key, amount in ((1, 10.0), (2, 20.0)):
                rows = conn.execute(f"SELECT * FROM feature_vector('{view}', %s)", (key,), prepare=True).fetchall()
                assert rows == [(key, amount)], view
            assert conn.execute(f"SELECT * FROM feature_vector('{view}', %s)", (3,), prepare=True).fetchall() == missing
            rows = conn.execute(f"SELECT * FROM feature_vectors('{view}', %s) ORDER BY cc", ([2, 1, 3],)).fetchall()
            assert rows == [(1, 10.0), (2, 20.0)] + missing, view

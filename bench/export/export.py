"""bench/export driver: the same ROWS x 50 doubles exported by Quiver (CREATE TRAINING DATASET from
a feature group) and by each format's usual Python writer from the data in memory; see run.sh.

Value f of row i is ((i * (7919 + f)) % 10007) / 7.0 in both.
"""

import argparse
import os
import shutil
import statistics
import time

COLUMNS = 50
RUNS = 3


def values_sql(start, rows):
    features = ", ".join(f"CAST((value * {7919 + f}) % 10007 AS DOUBLE PRECISION) / 7.0 AS f{f}" for f in range(COLUMNS))
    return f"SELECT value AS id, {features} FROM generate_series({start}, {start + rows - 1})"


def array(rows):
    import numpy
    i = numpy.arange(rows, dtype=numpy.int64)[:, None]
    factors = numpy.arange(7919, 7919 + COLUMNS, dtype=numpy.int64)[None, :]
    return ((i * factors) % 10007).astype(numpy.float64) / 7.0


def median_seconds(action, prepare=lambda: None):
    times = []
    for _ in range(RUNS):
        prepare()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synced(write, path):
    """`write(path)`, then the file's data synced to disk, as a Quiver export is before it returns."""
    def action():
        write(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return action


def remove(path):
    """Removes a peer's file before it is written again (outside the timing): rewriting a file in
    place would first discard its pages still waiting for writeback."""
    return lambda: os.path.exists(path) and os.remove(path)


def load_quiver(args):
    import psycopg
    with psycopg.connect(host="127.0.0.1", port=args.port, user="quiver", dbname="quiver", autocommit=True) as conn:
        columns = ", ".join(f"f{f} DOUBLE PRECISION" for f in range(COLUMNS))
        conn.execute(f"CREATE FEATURE GROUP wide (id BIGINT, {columns}, PRIMARY KEY (id))")
        step = 1_000_000
        for start in range(0, args.rows, step):
            n = min(step, args.rows - start)
            conn.execute(f"INSERT INTO wide {values_sql(start, n)}")


def quiver(args):
    import psycopg
    features = ", ".join(f"f{f}" for f in range(COLUMNS))
    results = {}
    with psycopg.connect(host="127.0.0.1", port=args.port, user="quiver", dbname="quiver", autocommit=True) as conn:
        for fmt in ("parquet", "tfrecords", "npy"):
            version = [0]

            def export():
                version[0] += 1
                location = os.path.join(args.work, f"quiver-{fmt}-{version[0]}")
                conn.execute(f"CREATE TRAINING DATASET ex_{fmt} VERSION {version[0]} AS SELECT {features} FROM wide "
                             f"FORMAT {fmt} LOCATION 'file://{location}'")

            def drop_previous():
                # 10M rows are 4 GB or more per export: keep one on disk at a time.
                if version[0] > 0:
                    conn.execute(f"DROP TRAINING DATASET ex_{fmt} VERSION {version[0]}")

            results[fmt] = median_seconds(export, drop_previous)
            drop_previous()
    return results


def peers(args):
    import numpy
    import pyarrow
    import pyarrow.parquet
    data = array(args.rows)
    results = {}
    table = pyarrow.Table.from_arrays([pyarrow.array(data[:, f]) for f in range(COLUMNS)],
                                      names=[f"f{f}" for f in range(COLUMNS)])
    path = os.path.join(args.work, "peer.parquet")

    def write_parquet(target):
        pyarrow.parquet.write_table(table, target, compression="zstd")

    results["parquet"] = median_seconds(lambda: write_parquet(path), remove(path))
    results["parquet synced"] = median_seconds(synced(write_parquet, path), remove(path))
    path = os.path.join(args.work, "peer.npy")

    def write_npy(target):
        numpy.save(target, data)

    results["npy"] = median_seconds(lambda: write_npy(path), remove(path))
    results["npy synced"] = median_seconds(synced(write_npy, path), remove(path))
    remove(path)()
    # TensorFlow's writer goes row by row in Python: timed on the first TF_ROWS rows, scaled up.
    import tensorflow as tf
    rows = min(args.tf_rows, args.rows)
    path = os.path.join(args.work, "peer.tfrecord")

    def write_tf():
        with tf.io.TFRecordWriter(path) as writer:
            for row in data[:rows]:
                feature = {f"f{f}": tf.train.Feature(float_list=tf.train.FloatList(value=[row[f]])) for f in range(COLUMNS)}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())

    results["tfrecords"] = median_seconds(write_tf) * args.rows / rows
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["load-quiver", "run"])
    parser.add_argument("--port", type=int, default=5496)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--tf-rows", type=int, default=200_000)
    parser.add_argument("--work", default="/tmp")
    args = parser.parse_args()
    if args.phase == "load-quiver":
        load_quiver(args)
        return
    ours = quiver(args)
    theirs = peers(args)
    peer_names = {"parquet": "pyarrow.parquet.write_table (zstd)", "npy": "numpy.save",
                  "tfrecords": f"TensorFlow TFRecordWriter (timed on {min(args.tf_rows, args.rows)} rows, scaled)"}
    print(f"{args.rows} rows x {COLUMNS} doubles, median of {RUNS}")
    for fmt in ("parquet", "npy", "tfrecords"):
        print(f"{fmt:9}: quiver {ours[fmt]:8.2f} s   {peer_names[fmt]} {theirs[fmt]:8.2f} s   "
              f"quiver/peer time {ours[fmt] / theirs[fmt]:.2f}x")
        if f"{fmt} synced" in theirs:
            # Quiver's export is durable when it returns; the peer's file is, after an fsync.
            durable = theirs[f"{fmt} synced"]
            print(f"{'':9}  the same peer with its file fsynced {durable:8.2f} s   quiver/peer time {ours[fmt] / durable:.2f}x")


if __name__ == "__main__":
    main()

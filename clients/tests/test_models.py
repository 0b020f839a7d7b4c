"""Models as SQL functions, checked from a real client against references computed in Python on
the same rows: train_model's metrics, predict, serve with a prepared statement, the prediction log
(ASOF-joined to outcomes afterwards) and tune_model's runs."""

import json
import time

import numpy
import psycopg
import pytest
from psycopg import sql

from conftest import QuiverServer

ROWS = 1200


@pytest.fixture()
def conn(quiver):
    with psycopg.connect(host="127.0.0.1", port=quiver, user="quiver", dbname="quiver", autocommit=True) as conn:
        conn.execute(
            "CREATE FEATURE GROUP acct (id BIGINT, a DOUBLE PRECISION, b DOUBLE PRECISION, "
            "ts TIMESTAMP NOT NULL, PRIMARY KEY (id), EVENT TIME ts) WITH (online = true)"
        )
        # A pseudo-random cloud: the label is 1 above the line a + 2b = 1.5, with a little noise.
        conn.execute(
            f"""INSERT INTO acct SELECT v, ((v * 7919) % 1000) / 1000.0, ((v * 104729) % 997) / 997.0,
                   to_timestamp_seconds(1767225600 + v) FROM generate_series(1, {ROWS}) AS g(v)"""
        )
        conn.execute("CREATE TABLE outcomes (id BIGINT, ts TIMESTAMP, y BIGINT, amount DOUBLE PRECISION)")
        conn.execute(
            f"""INSERT INTO outcomes SELECT v, to_timestamp_seconds(1767225600 + v + 1),
                   CASE WHEN ((v * 7919) % 1000) / 1000.0 + 2 * ((v * 104729) % 997) / 997.0
                             + (v % 7 - 3) / 50.0 > 1.5 THEN 1 ELSE 0 END,
                   4 * ((v * 7919) % 1000) / 1000.0 - ((v * 104729) % 997) / 997.0 + (v % 5) / 100.0
                FROM generate_series(1, {ROWS}) AS g(v)"""
        )
        conn.execute(
            """CREATE FEATURE VIEW risk AS SELECT o.id, o.y, f.a, f.b FROM outcomes o
               ASOF JOIN acct f MATCH_CONDITION (o.ts >= f.ts) ON o.id = f.id WITH (label = 'y')"""
        )
        conn.execute(
            "CREATE TRAINING DATASET risk_td FROM FEATURE VIEW risk FORMAT parquet "
            "SPLIT (train = 0.75, test = 0.25) SEED 11"
        )
        yield conn


def split(conn, dataset, name, columns):
    return numpy.array(
        conn.execute(f"SELECT {columns} FROM training_dataset('{dataset}', 1, '{name}') ORDER BY id").fetchall(),
        dtype=float,
    )


def auc(labels, scores):
    """ROC AUC as the probability that a positive outranks a negative (ties count half)."""
    positives = scores[labels == 1]
    negatives = scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize("algorithm", ["logistic_regression", "random_forest_classifier"])
def test_classifiers_learn_a_clear_relation_and_report_true_metrics(conn, algorithm):
    params = {"exclude": ["id"]}
    if algorithm == "random_forest_classifier":
        params.update({"n_trees": 30, "max_depth": 8})
    # train_model's arguments are constants (it refuses parameters): literals, quoted by psycopg.
    call = sql.SQL("SELECT * FROM train_model('risk_model', 'risk_td', 1, {}, {})").format(
        sql.Literal(algorithm), sql.Literal(json.dumps(params))
    )
    model, version, metrics, run_id = conn.execute(call).fetchone()
    metrics = json.loads(metrics)
    assert metrics["roc_auc"] > 0.9, metrics
    # The reported metrics are those of predict() over the test split, recomputed here.
    test = numpy.array(
        conn.execute(
            f"SELECT y, predict('risk_model', {version}, a, b) FROM training_dataset('risk_td', 1, 'test')"
        ).fetchall(),
        dtype=float,
    )
    labels, scores = test[:, 0], test[:, 1]
    assert abs(auc(labels, scores) - metrics["roc_auc"]) < 1e-9
    assert abs(((scores >= 0.5) == (labels == 1)).mean() - metrics["accuracy"]) < 1e-9
    clipped = numpy.clip(scores, 1e-15, 1 - 1e-15)
    log_loss = -(labels * numpy.log(clipped) + (1 - labels) * numpy.log(1 - clipped)).mean()
    assert abs(log_loss - metrics["log_loss"]) < 1e-9
    runs = conn.execute("SELECT model, model_version, algorithm FROM quiver.experiments WHERE run_id = %s", (run_id,))
    assert runs.fetchall() == [("risk_model", version, algorithm)]


def test_linear_regression_predicts_what_least_squares_predicts(conn):
    conn.execute(
        """CREATE TRAINING DATASET amount_td AS SELECT o.id, f.a, f.b, o.amount FROM outcomes o
           ASOF JOIN acct f MATCH_CONDITION (o.ts >= f.ts) ON o.id = f.id
           FORMAT arrow SPLIT (train = 0.8, test = 0.2) SEED 5"""
    )
    _, version, metrics, _ = conn.execute(
        """SELECT * FROM train_model('amount_model', 'amount_td', 1, 'linear_regression',
           '{"label": "amount", "exclude": ["id"]}')"""
    ).fetchone()
    train = split(conn, "amount_td", "train", "a, b, amount")
    design = numpy.column_stack([train[:, 0], train[:, 1], numpy.ones(len(train))])
    coefficients, *_ = numpy.linalg.lstsq(design, train[:, 2], rcond=None)
    rows = conn.execute(f"SELECT a, b, predict('amount_model', {version}, a, b) FROM acct ORDER BY id LIMIT 50").fetchall()
    for a, b, predicted in rows:
        assert abs(predicted - (coefficients[0] * a + coefficients[1] * b + coefficients[2])) < 1e-9
    test = split(conn, "amount_td", "test", "a, b, amount")
    residuals = test[:, 2] - numpy.column_stack([test[:, 0], test[:, 1], numpy.ones(len(test))]) @ coefficients
    assert abs(numpy.sqrt((residuals**2).mean()) - json.loads(metrics)["rmse"]) < 1e-9


def test_serve_predicts_as_predict_and_logs_for_monitoring(conn):
    conn.execute("SELECT * FROM train_model('risk_model', 'risk_td', 1, 'logistic_regression', '{\"exclude\": [\"id\"]}')")
    served = {}
    with conn.cursor() as cursor:
        for key in [3, 17, 250]:
            # A prepared statement with the key as a parameter, as a serving client sends it.
            cursor.execute("SELECT request_id, id, a, b, prediction FROM serve('risk_model', %s)", (key,), prepare=True)
            request_id, id_, a, b, prediction = cursor.fetchone()
            assert id_ == key
            expected = conn.execute("SELECT predict('risk_model', 1, a, b) FROM acct WHERE id = %s", (key,)).fetchone()
            assert prediction == expected[0]
            served[request_id] = (key, prediction)
    # The log is written in the background within a fraction of a second.
    deadline = time.time() + 10
    logged = []
    while time.time() < deadline:
        try:
            logged = conn.execute("SELECT request_id, id, prediction, model_version FROM risk_model_predictions").fetchall()
        except psycopg.errors.UndefinedTable:
            logged = []
        if len(logged) == len(served):
            break
        time.sleep(0.1)
    assert {r: (k, p) for r, k, p, _ in logged} == served
    assert {v for *_, v in logged} == {1}
    # Outcomes arriving later join to the predictions made before them.
    conn.execute("CREATE TABLE later (id BIGINT, ts TIMESTAMP, y BIGINT)")
    conn.execute("INSERT INTO later VALUES (3, now() + INTERVAL '1 hour', 1), (17, now() + INTERVAL '1 hour', 0)")
    joined = conn.execute(
        """SELECT l.id, l.y, p.prediction FROM later l
           ASOF JOIN risk_model_predictions p MATCH_CONDITION (l.ts >= p.served_at) ON l.id = p.id ORDER BY l.id"""
    ).fetchall()
    assert [(i, y, p) for i, y, p in joined] == [(3, 1, served_for(served, 3)), (17, 0, served_for(served, 17))]
    # A prepared serve whose log was dropped (by another connection: psycopg forgets its own
    # prepared statements after a DROP) refuses to serve unlogged; prepared again, it logs to a
    # new log.
    with psycopg.connect(host="127.0.0.1", port=conn.info.port, user="quiver", dbname="quiver", autocommit=True) as other:
        other.execute("DROP FEATURE GROUP risk_model_predictions")
        request_id = other.execute("SELECT request_id FROM serve('risk_model', %s)", (3,), prepare=True).fetchone()[0]
    with conn.cursor() as cursor:
        with pytest.raises(psycopg.errors.UndefinedTable, match="prepare the statement again"):
            cursor.execute("SELECT request_id, id, a, b, prediction FROM serve('risk_model', %s)", (3,), prepare=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            if conn.execute("SELECT request_id FROM risk_model_predictions").fetchall() == [(request_id,)]:
                break
        except psycopg.errors.UndefinedTable:
            pass
        time.sleep(0.1)
    assert conn.execute("SELECT request_id FROM risk_model_predictions").fetchall() == [(request_id,)]


def served_for(served, key):
    return next(p for k, p in served.values() if k == key)


def test_train_model_and_predict_refuse_parameters_for_the_model(conn):
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="must be constants"):
        conn.execute("SELECT * FROM train_model('m', 'risk_td', 1, %s)", ("logistic_regression",))
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="must be constants"):
        conn.execute("SELECT predict(%s, 1, 0.5, 0.5)", ("risk_model",))


def test_tune_records_every_trial_and_registers_the_best(conn):
    rows = conn.execute(
        """SELECT version, params, metrics, run_id, best FROM tune_model('risk_model', 'risk_td', 1,
           'random_forest_classifier', '{"exclude": ["id"], "n_trees": [5, 20], "max_depth": [2, 8], "seed": 2}')"""
    ).fetchall()
    assert len(rows) == 4
    best = [r for r in rows if r[4]]
    assert len(best) == 1 and best[0][0] == 1
    best_auc = json.loads(best[0][2])["roc_auc"]
    assert all(json.loads(r[2])["roc_auc"] <= best_auc for r in rows)
    runs = conn.execute("SELECT run_id, params FROM quiver.experiments WHERE model = 'risk_model'").fetchall()
    assert sorted(runs) == sorted((r[3], r[1]) for r in rows)
    assert conn.execute("SELECT params FROM quiver.models WHERE name = 'risk_model'").fetchall() == [(best[0][1],)]


def test_a_canceled_training_reports_progress_and_registers_nothing(conn):
    import threading

    conn.execute(
        f"""INSERT INTO outcomes SELECT v % {ROWS} + 1, to_timestamp_seconds(1767225600 + v + 1), v % 2, 0.0
            FROM generate_series({ROWS + 1}, 60000) AS g(v)"""
    )
    conn.execute("CREATE TRAINING DATASET big FROM FEATURE VIEW risk FORMAT parquet SPLIT (train = 0.9, test = 0.1)")
    notices = []
    fitting = threading.Event()

    def on_notice(diagnostic):
        notices.append(diagnostic.message_primary)
        if "fitting" in diagnostic.message_primary:
            fitting.set()

    conn.add_notice_handler(on_notice)
    canceller = threading.Thread(target=lambda: fitting.wait(120) and conn.cancel())
    canceller.start()
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SELECT * FROM train_model('slow', 'big', 1, 'random_forest_classifier', '{\"n_trees\": 500}')")
    canceller.join()
    assert any("fitting random_forest_classifier" in n for n in notices), notices
    assert conn.execute("SELECT count(*) FROM quiver.models WHERE name = 'slow'").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM quiver.experiments WHERE model = 'slow'").fetchone() == (0,)


def test_dropping_a_project_deletes_its_models_artifacts(quiver, tmp_path):
    with psycopg.connect(host="127.0.0.1", port=quiver, user="quiver", dbname="quiver", autocommit=True) as admin:
        admin.execute("CREATE PROJECT lab")
        with psycopg.connect(host="127.0.0.1", port=quiver, user="quiver", dbname="lab", autocommit=True) as conn:
            conn.execute("CREATE TABLE pts (x DOUBLE PRECISION, y DOUBLE PRECISION)")
            conn.execute("INSERT INTO pts SELECT value, 2 * value + 1 FROM generate_series(1, 200)")
            conn.execute("CREATE TRAINING DATASET td AS SELECT x, y FROM pts FORMAT parquet SPLIT (train = 0.8, test = 0.2)")
            conn.execute("""SELECT * FROM train_model('line', 'td', 1, 'linear_regression', '{"label": "y"}')""")
        artifacts = tmp_path / "data" / "offline" / "models" / "lab"
        assert len(list(artifacts.rglob("*.json"))) == 1
        admin.execute("DROP PROJECT lab CASCADE")
        assert list(artifacts.rglob("*.json")) == []


def test_a_restarted_server_serves_and_predicts_with_the_stored_models(tmp_path):
    """Models are loaded from their artifacts when a statement first needs them: after a restart,
    serve() as much as predict()."""
    server = QuiverServer(tmp_path / "data")
    port = server.start()
    with psycopg.connect(host="127.0.0.1", port=port, user="quiver", dbname="quiver", autocommit=True) as conn:
        conn.execute(
            "CREATE FEATURE GROUP pts (id BIGINT, a DOUBLE PRECISION, ts TIMESTAMP NOT NULL, "
            "PRIMARY KEY (id), EVENT TIME ts) WITH (online = true)"
        )
        conn.execute("INSERT INTO pts SELECT v, v / 100.0, to_timestamp_seconds(v) FROM generate_series(1, 200) AS g(v)")
        conn.execute("CREATE TABLE seen (id BIGINT, ts TIMESTAMP, y BIGINT)")
        conn.execute("INSERT INTO seen SELECT v, to_timestamp_seconds(v + 1), CASE WHEN v > 100 THEN 1 ELSE 0 END FROM generate_series(1, 200) AS g(v)")
        conn.execute(
            "CREATE FEATURE VIEW pv AS SELECT s.id, s.y, p.a FROM seen s "
            "ASOF JOIN pts p MATCH_CONDITION (s.ts >= p.ts) ON s.id = p.id WITH (label = 'y')"
        )
        conn.execute("CREATE TRAINING DATASET pv_td FROM FEATURE VIEW pv FORMAT parquet SPLIT (train = 0.8, test = 0.2) SEED 3")
        conn.execute("SELECT * FROM train_model('pm', 'pv_td', 1, 'logistic_regression', '{\"exclude\": [\"id\"]}')")
        before = conn.execute("SELECT prediction FROM serve('pm', 150)").fetchone()[0]
    # Stopped within the second the served row waits in memory for its log: a clean stop writes it.
    server.stop()
    port = server.start()
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="quiver", dbname="quiver", autocommit=True) as conn:
            assert conn.execute("SELECT id, prediction FROM pm_predictions").fetchall() == [(150, before)]
            assert conn.execute("SELECT prediction FROM serve('pm', 150)").fetchone()[0] == before
            assert conn.execute("SELECT prediction FROM serve('pm', %s)", (150,), prepare=True).fetchone()[0] == before
            assert conn.execute("SELECT predict('pm', 1, 1.5)").fetchone()[0] == before
    finally:
        server.stop()

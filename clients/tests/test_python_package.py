"""The `quiver` Python package (clients/python): each call is SQL, checked against the server."""

import datetime

import numpy as np
import pandas as pd
import pyarrow
import pytest

import quiver as quiver_client


@pytest.fixture()
def fs(quiver):
    """The package connected to a fresh server (`quiver` is the server's port)."""
    store = quiver_client.connect(host="127.0.0.1", port=quiver, user="quiver", project="quiver")
    yield store
    store.close()


def transactions_frame():
    return pd.DataFrame({
        "cc_num": np.array([1, 2, 3, 1], dtype="int64"),
        "amount": [10.0, 20.0, np.nan, 40.0],
        "category": ["food", "travel", None, "food"],
        "embedding": [[0.5, 1.0], [1.5, 2.0], [2.5, 3.0], [3.5, 4.0]],
        "ts": pd.to_datetime(["2024-01-01 10:00", "2024-01-01 11:00", "2024-01-01 12:00", "2024-01-02 10:00"]),
    })


def test_feature_group_insert_and_read_both_stores(fs):
    group = fs.create_feature_group(
        "transactions",
        features={"cc_num": "BIGINT", "amount": "DOUBLE PRECISION", "category": "TEXT",
                  "embedding": "REAL[]", "ts": "TIMESTAMP"},
        primary_key=["cc_num"], event_time="ts", online=True, description="card transactions",
    )
    assert (group.name, group.version, group.table) == ("transactions", 1, "transactions_1")
    assert list(group.schema()["name"]) == ["cc_num", "amount", "category", "embedding", "ts"]
    assert group.insert(transactions_frame()) == 4

    history = group.read().sort_values(["cc_num", "ts"]).reset_index(drop=True)
    assert list(history["cc_num"]) == [1, 1, 2, 3]
    assert history["amount"].isna().tolist() == [False, False, False, True]
    assert list(history["embedding"][0]) == [0.5, 1.0]

    latest = group.read(online=True).sort_values("cc_num").reset_index(drop=True)
    assert list(latest["cc_num"]) == [1, 2, 3]
    assert list(latest["amount"][:2]) == [40.0, 20.0]

    table = group.read(dataframe_type="arrow")
    assert isinstance(table, pyarrow.Table) and table.num_rows == 4

    assert fs.get_feature_group("transactions").version == 1
    with pytest.raises(LookupError):
        fs.get_feature_group("transactions", version=2)


def test_feature_group_from_a_dataframe_and_a_second_version(fs):
    frame = pd.DataFrame({"id": [1, 2], "score": [0.5, 0.25], "flag": [True, False],
                          "at": pd.to_datetime(["2024-01-01", "2024-01-02"])})
    first = fs.create_feature_group("scores", primary_key=["id"], dataframe=frame, event_time="at")
    assert list(first.schema()["type"]) == ["bigint", "double precision", "boolean", "timestamp without time zone"]
    first.insert(frame)
    second = fs.create_feature_group("scores", primary_key=["id"], dataframe=frame, version=2)
    assert fs.get_feature_group("scores").version == 2
    assert len(second.read()) == 0 and len(first.read()) == 2
    with pytest.raises(KeyError):
        first.insert(pd.DataFrame({"nope": [1]}))


def test_feature_view_training_dataset_and_feature_vectors(fs):
    group = fs.create_feature_group(
        "transactions",
        features={"cc_num": "BIGINT", "amount": "DOUBLE PRECISION", "is_fraud": "BOOLEAN", "ts": "TIMESTAMP"},
        primary_key=["cc_num"], event_time="ts", online=True,
    )
    rows = 200
    group.insert(pd.DataFrame({
        "cc_num": np.arange(rows, dtype="int64"),
        "amount": np.arange(rows, dtype="float64"),
        "is_fraud": np.arange(rows) % 7 == 0,
        "ts": [datetime.datetime(2024, 1, 1) + datetime.timedelta(minutes=i) for i in range(rows)],
    }))
    view = fs.create_feature_view(
        "fraud", "SELECT cc_num, amount, is_fraud FROM transactions",
        label="is_fraud", transforms={"amount": "min_max_scaler"},
    )
    assert (view.name, view.version) == ("fraud", 1)
    dataset = view.create_training_dataset("fraud_td", format="parquet", splits={"train": 0.8, "test": 0.2}, seed=7)
    record = dataset.describe()
    assert record["format"] == "parquet" and record["seed"] == 7
    train, test = dataset.to_pandas("train"), dataset.to_pandas("test")
    assert len(train) + len(test) == rows
    assert set(train["cc_num"]).isdisjoint(test["cc_num"])
    assert train["amount"].min() == 0.0 and train["amount"].max() == 1.0
    assert dataset.label == "is_fraud"

    vector = view.get_feature_vector(42)
    assert set(vector) == {"cc_num", "amount"} and vector["cc_num"] == 42
    expected = (42 - train_min(train)) / (train_max(train) - train_min(train))
    assert vector["amount"] == pytest.approx(expected)
    vectors = view.get_feature_vectors([1, 2, 3])
    assert sorted(vectors["cc_num"]) == [1, 2, 3]
    assert view.get_feature_vector(10_000) == {}


def train_min(train):
    # The raw amounts of the train split are the cc_nums (amount = cc_num in this data).
    return train["cc_num"].min()


def train_max(train):
    return train["cc_num"].max()


def test_sql_runs_any_statement(fs):
    assert fs.sql("CREATE TABLE labels (id BIGINT PRIMARY KEY, y BOOLEAN)") is None
    fs.sql("INSERT INTO labels VALUES (%s, %s)", (1, True))
    assert fs.sql("SELECT * FROM labels").to_dict("list") == {"id": [1], "y": [True]}

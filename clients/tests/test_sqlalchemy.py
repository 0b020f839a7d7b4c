"""SQLAlchemy 2 inspection and pandas' read_sql / to_sql, with no client-side workaround."""

import pandas as pd
import pytest
import sqlalchemy as sa


@pytest.fixture()
def engine(quiver):
    engine = sa.create_engine(f"postgresql+psycopg://quiver@127.0.0.1:{quiver}/quiver")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FEATURE GROUP transactions (cc_num BIGINT NOT NULL, amount DOUBLE PRECISION, "
            "category VARCHAR(20), ts TIMESTAMP NOT NULL, PRIMARY KEY (cc_num), EVENT TIME ts) "
            "WITH (online = true, description = 'card transactions')"
        )
        conn.exec_driver_sql("CREATE FEATURE VIEW spend AS SELECT cc_num, amount FROM transactions")
    yield engine
    engine.dispose()


def test_inspection_sees_groups_views_columns_keys_and_comments(engine):
    inspector = sa.inspect(engine)
    assert sorted(inspector.get_table_names()) == ["transactions", "transactions_1"]
    assert sorted(inspector.get_view_names()) == ["spend", "spend_1"]
    assert sorted(inspector.get_schema_names()) == ["information_schema", "online", "public", "quiver"]
    columns = {c["name"]: c for c in inspector.get_columns("transactions")}
    assert list(columns) == ["cc_num", "amount", "category", "ts"]
    assert isinstance(columns["cc_num"]["type"], sa.BIGINT)
    assert isinstance(columns["amount"]["type"], sa.DOUBLE_PRECISION)
    assert isinstance(columns["category"]["type"], sa.VARCHAR) and columns["category"]["type"].length == 20
    assert isinstance(columns["ts"]["type"], sa.TIMESTAMP)
    assert [columns[c]["nullable"] for c in columns] == [False, True, True, False]
    assert inspector.get_pk_constraint("transactions") == {
        "constrained_columns": ["cc_num"], "name": "transactions_pkey", "comment": None,
    }
    assert inspector.get_table_comment("transactions") == {"text": "card transactions"}
    assert inspector.get_indexes("transactions") == []
    assert inspector.get_table_names(schema="online") == ["transactions_1", "transactions"]
    assert inspector.get_pk_constraint("transactions", schema="online")["constrained_columns"] == ["cc_num"]


def test_pandas_to_sql_creates_a_plain_table_and_read_sql_reads_it_back(engine):
    frame = pd.DataFrame({
        "id": [1, 2, 3],
        "name": ["a", "b", None],
        "score": [1.5, None, 3.25],
        "flag": [True, False, True],
        "at": pd.to_datetime(["2024-01-01 10:00", "2024-01-02 11:30", "2024-01-03 00:00"]),
    })
    frame.to_sql("labels", engine, index=False)
    back = pd.read_sql("SELECT * FROM labels ORDER BY id", engine)
    pd.testing.assert_frame_equal(back, frame)
    # if_exists="append" adds, "replace" drops and recreates.
    frame.to_sql("labels", engine, index=False, if_exists="append")
    assert pd.read_sql("SELECT count(*) AS n FROM labels", engine)["n"][0] == 6
    frame.head(1).to_sql("labels", engine, index=False, if_exists="replace")
    assert pd.read_sql("SELECT count(*) AS n FROM labels", engine)["n"][0] == 1
    assert "labels" in sa.inspect(engine).get_table_names()


def test_read_sql_with_parameters_over_a_feature_group(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO transactions VALUES (1, 10.5, 'food', '2024-01-01 10:00:00'), "
            "(2, 99.0, 'travel', '2024-01-01 11:00:00')"
        )
    frame = pd.read_sql(
        sa.text("SELECT cc_num, amount FROM transactions WHERE amount > :low ORDER BY cc_num"),
        engine, params={"low": 20},
    )
    assert frame.to_dict("list") == {"cc_num": [2], "amount": [99.0]}

"""psql: the README session, \\copy both ways, and error reporting."""

import pathlib
import subprocess


def psql(port: int, sql: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "quiver", "-X", "-q", "-A", "-t",
         "-v", "ON_ERROR_STOP=1", *extra],
        input=sql, capture_output=True, text=True, timeout=120,
    )


def test_readme_session(quiver):
    result = psql(quiver, """
CREATE FEATURE GROUP transactions (
    cc_num BIGINT NOT NULL, amount DOUBLE PRECISION, category TEXT, ts TIMESTAMP NOT NULL,
    PRIMARY KEY (cc_num), EVENT TIME ts
) WITH (description = 'card transactions');
INSERT INTO transactions VALUES (42, 12.5, 'food', '2026-06-01 10:00:00'),
                                (42, 80.0, 'travel', '2026-06-02 09:30:00');
CREATE FEATURE GROUP card_aggs (cc_num BIGINT, avg_amount DOUBLE PRECISION, ts TIMESTAMP,
    PRIMARY KEY (cc_num), EVENT TIME ts) WITH (online = true);
INSERT INTO card_aggs SELECT cc_num, avg(amount), max(ts) FROM transactions GROUP BY cc_num;
SELECT cc_num, avg_amount FROM card_aggs;
SELECT avg_amount FROM online.card_aggs WHERE cc_num = 42;
SELECT t.amount, a.avg_amount FROM transactions t
  ASOF JOIN card_aggs a MATCH_CONDITION (t.ts >= a.ts)
  ON t.cc_num = a.cc_num ORDER BY t.ts;
CREATE FEATURE VIEW spend AS
  SELECT t.cc_num, t.amount, a.avg_amount FROM transactions t
  ASOF JOIN card_aggs a MATCH_CONDITION (t.ts >= a.ts) ON t.cc_num = a.cc_num
  WITH (label = 'amount', transform = 'avg_amount:standard_scaler');
CREATE TRAINING DATASET spend_td FROM FEATURE VIEW spend FORMAT tfrecords;
CREATE TRAINING DATASET spend_pq FROM FEATURE VIEW spend FORMAT parquet;
SELECT count(*) FROM training_dataset('spend_pq', 1, 'train');
CREATE FEATURE VIEW card_features AS SELECT cc_num, avg_amount FROM card_aggs;
SELECT * FROM feature_vector('card_features', 42);
SELECT name, offline_rows FROM quiver.feature_groups ORDER BY name;
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "42|46.25", "46.25", "12.5|", "80.0|46.25", "2", "42|46.25", "card_aggs|1", "transactions|2",
    ]


def test_copy_from_and_to_a_file(quiver, tmp_path):
    source = tmp_path / "labels.csv"
    source.write_text("cc_num,ts,is_fraud\n1,2026-06-01 00:00:00,true\n2,2026-06-02 00:00:00,false\n3,2026-06-03 00:00:00,\n")
    target = tmp_path / "out.csv"
    result = psql(quiver, f"""
CREATE TABLE labels (cc_num BIGINT, ts TIMESTAMP, is_fraud BOOLEAN);
\\copy labels FROM '{source}' WITH (FORMAT csv, HEADER)
\\copy (SELECT * FROM labels ORDER BY cc_num) TO '{target}' WITH (FORMAT csv, HEADER)
SELECT count(*), count(is_fraud) FROM labels;
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3|2"]
    assert target.read_text().splitlines() == [
        "cc_num,ts,is_fraud",
        "1,2026-06-01 00:00:00,t",
        "2,2026-06-02 00:00:00,f",
        "3,2026-06-03 00:00:00,",
    ]


def test_copy_text_format_and_bad_rows(quiver, tmp_path):
    good = tmp_path / "good.tsv"
    good.write_text("1\tfirst\\tline\t{0.5,1.5}\n2\t\\N\t\\N\n")
    bad = tmp_path / "bad.tsv"
    bad.write_text("3\tok\t{1}\nfour\toops\t{2}\n")
    result = psql(quiver, f"""
CREATE TABLE docs (id BIGINT, body TEXT, embedding REAL[]);
\\copy docs FROM '{good}'
SELECT id, body, embedding FROM docs ORDER BY id;
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["1|first\tline|{0.5,1.5}", "2||"]
    failed = psql(quiver, f"\\copy docs FROM '{bad}'\n", "-v", "VERBOSITY=verbose")
    assert failed.returncode != 0
    assert "22P02" in failed.stderr
    assert 'row 2, column "id"' in failed.stderr
    count = psql(quiver, "SELECT count(*) FROM docs;")
    assert count.stdout.strip() == "2", "a failed COPY must write nothing"
    narrow = tmp_path / "narrow.tsv"
    narrow.write_text("5\tonly two columns\n")
    failed = psql(quiver, f"\\copy docs FROM '{narrow}'\n", "-v", "VERBOSITY=verbose")
    assert failed.returncode != 0
    assert "22P04" in failed.stderr
    assert "row 1 has 2 columns, expected 3" in failed.stderr


def test_errors_carry_sqlstate(quiver):
    result = psql(quiver, "SELECT * FROM missing_table;\n", "-v", "VERBOSITY=verbose")
    assert result.returncode != 0
    assert "42P01" in result.stderr
    assert 'relation "missing_table" does not exist' in result.stderr


def test_describe_online_table(quiver):
    """`\\d online.<group>`: psql's own catalog queries answered from pg_catalog."""
    created = psql(quiver, """
CREATE FEATURE GROUP served (id BIGINT NOT NULL, ts TIMESTAMP NOT NULL, score DOUBLE PRECISION,
    label TEXT, PRIMARY KEY (id), EVENT TIME ts) WITH (online = true);
""")
    assert created.returncode == 0, created.stderr
    result = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(quiver), "-U", "quiver", "-X", "-c", r"\d online.served"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected = (pathlib.Path(__file__).parent / "expected" / "describe_online.out").read_text()
    assert result.stdout == expected


META_COMMANDS = r"""
CREATE FEATURE GROUP transactions (cc_num BIGINT NOT NULL, amount DOUBLE PRECISION, category TEXT,
    ts TIMESTAMP NOT NULL, PRIMARY KEY (cc_num), EVENT TIME ts)
    WITH (online = true, description = 'card transactions');
CREATE TABLE labels (id BIGINT PRIMARY KEY, fraud BOOLEAN);
CREATE FEATURE VIEW spend AS SELECT cc_num, amount FROM transactions;
CREATE PROJECT fraud;
\echo == l
\l
\echo == dn
\dn
\echo == dt
\dt
\echo == dt+
\dt+
\echo == dv
\dv
\echo == di
\di
\echo == dt online.*
\dt online.*
\echo == d transactions
\d transactions
\echo == d+ transactions
\d+ transactions
\echo == d online.transactions
\d online.transactions
\echo == d labels
\d labels
\echo == d+ spend
\d+ spend
\echo == d transactions_pkey
\d transactions_pkey
\echo == du
\du
\echo == df
\df
\echo == df pg_catalog.string_to_table
\df pg_catalog.string_to_table
\echo == dfS aclexplode
\dfS aclexplode
\echo == df+ pg_catalog.abs
\df+ pg_catalog.abs
"""


def test_meta_commands(quiver):
    """psql's meta-commands answered from pg_catalog: listings, \\d and \\d+ with primary-key
    indexes, owners and view definitions, compared with an expected file."""
    result = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(quiver), "-U", "quiver", "-X", "-v", "ON_ERROR_STOP=1"],
        input=META_COMMANDS, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected = (pathlib.Path(__file__).parent / "expected" / "meta_commands.out").read_text()
    assert result.stdout == expected

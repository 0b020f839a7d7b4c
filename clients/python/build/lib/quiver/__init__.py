"""A thin Python API over Quiver's SQL, in the spirit of the Hopsworks client.

Every method sends SQL a user could have written: the server owns the logic (versions, splits,
transformations, point-in-time joins), this package only spells the statements and turns rows into
pandas, Arrow, TensorFlow or PyTorch objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

__all__ = ["connect", "FeatureStore", "FeatureGroup", "FeatureView", "TrainingDataset"]

# The SQL type a pandas column becomes when a feature group is created from a DataFrame.
_DTYPE_TO_SQL = {
    "bool": "BOOLEAN",
    "int8": "SMALLINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "Int64": "BIGINT",
    "float32": "REAL",
    "float64": "DOUBLE PRECISION",
    "object": "TEXT",
    "string": "TEXT",
}


def connect(
    host: str = "127.0.0.1",
    port: int = 5433,
    user: str = "quiver",
    project: str = "quiver",
    password: Optional[str] = None,
    **options: Any,
) -> "FeatureStore":
    """Connects to a project (a database) of a Quiver server."""
    conn = psycopg.connect(
        host=host, port=port, user=user, dbname=project, password=password, autocommit=True, **options
    )
    return FeatureStore(conn)


def _sql_type(dtype: Any) -> str:
    if isinstance(dtype, pd.DatetimeTZDtype):
        return "TIMESTAMPTZ"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "TIMESTAMP"
    try:
        return _DTYPE_TO_SQL[str(dtype)]
    except KeyError:
        raise TypeError(f"no SQL type for pandas dtype {dtype}; pass features={{column: type}}") from None


def _python_value(value: Any) -> Any:
    """A value as psycopg adapts it: missing values become NULL, numpy values Python ones."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    return value


class FeatureStore:
    """One connection to one project."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn

    def close(self) -> None:
        self.conn.close()

    def sql(self, query: str | sql.Composable, params: Optional[Sequence[Any] | Mapping[str, Any]] = None):
        """Runs a statement; returns its rows as a DataFrame, or None when it returns none."""
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            if cur.description is None:
                return None
            columns = [d.name for d in cur.description]
            return pd.DataFrame(cur.fetchall(), columns=columns)

    def _scalar(self, query: str | sql.Composable, params: Optional[Sequence[Any]] = None) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    # Feature groups

    def create_feature_group(
        self,
        name: str,
        primary_key: Sequence[str],
        features: Optional[Mapping[str, str]] = None,
        dataframe: Optional[pd.DataFrame] = None,
        event_time: Optional[str] = None,
        online: bool = False,
        version: Optional[int] = None,
        description: Optional[str] = None,
        ttl: Optional[str] = None,
    ) -> "FeatureGroup":
        """CREATE FEATURE GROUP with the given columns (`features`, name to SQL type), or columns
        typed from a DataFrame's dtypes; the DataFrame's rows are not inserted."""
        if features is None:
            if dataframe is None:
                raise ValueError("give the columns as features={name: type} or a dataframe")
            features = {str(c): _sql_type(t) for c, t in dataframe.dtypes.items()}
        columns = [
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in features.items()
        ]
        columns.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, primary_key))))
        if event_time:
            columns.append(sql.SQL("EVENT TIME {}").format(sql.Identifier(event_time)))
        options = [sql.SQL("online = {}").format(sql.SQL("true" if online else "false"))]
        if description is not None:
            options.append(sql.SQL("description = {}").format(sql.Literal(description)))
        if ttl is not None:
            options.append(sql.SQL("ttl = {}").format(sql.Literal(ttl)))
        statement = sql.SQL("CREATE FEATURE GROUP {}{} ({}) WITH ({})").format(
            sql.Identifier(name),
            sql.SQL(" VERSION {}").format(sql.Literal(version)) if version else sql.SQL(""),
            sql.SQL(", ").join(columns),
            sql.SQL(", ").join(options),
        )
        self.conn.execute(statement)
        return self.get_feature_group(name, version)

    def get_feature_group(self, name: str, version: Optional[int] = None) -> "FeatureGroup":
        """A feature group version (the latest without `version`); LookupError if there is none."""
        found = self._scalar(
            "SELECT max(version) FROM quiver.feature_groups WHERE name = %s AND (%s::int IS NULL OR version = %s::int)",
            (name, version, version),
        )
        if found is None:
            raise LookupError(f"feature group {name!r} version {version or 'latest'} does not exist")
        return FeatureGroup(self, name, int(found))

    # Feature views

    def create_feature_view(
        self,
        name: str,
        query: str,
        label: Optional[str] = None,
        transforms: Optional[Mapping[str, str]] = None,
        version: Optional[int] = None,
        description: Optional[str] = None,
    ) -> "FeatureView":
        """CREATE FEATURE VIEW name AS <query> WITH (label, transform, description)."""
        options = []
        if label is not None:
            options.append(sql.SQL("label = {}").format(sql.Literal(label)))
        if transforms:
            spec = ", ".join(f"{column}:{kind}" for column, kind in transforms.items())
            options.append(sql.SQL("transform = {}").format(sql.Literal(spec)))
        if description is not None:
            options.append(sql.SQL("description = {}").format(sql.Literal(description)))
        statement = sql.SQL("CREATE FEATURE VIEW {}{} AS {}{}").format(
            sql.Identifier(name),
            sql.SQL(" VERSION {}").format(sql.Literal(version)) if version else sql.SQL(""),
            sql.SQL(query),
            sql.SQL(" WITH ({})").format(sql.SQL(", ").join(options)) if options else sql.SQL(""),
        )
        self.conn.execute(statement)
        return self.get_feature_view(name, version)

    def get_feature_view(self, name: str, version: Optional[int] = None) -> "FeatureView":
        found = self._scalar(
            "SELECT max(version) FROM quiver.feature_views WHERE name = %s AND (%s::int IS NULL OR version = %s::int)",
            (name, version, version),
        )
        if found is None:
            raise LookupError(f"feature view {name!r} version {version or 'latest'} does not exist")
        return FeatureView(self, name, int(found))

    def get_training_dataset(self, name: str, version: Optional[int] = None) -> "TrainingDataset":
        found = self._scalar(
            "SELECT max(version) FROM quiver.training_datasets WHERE name = %s AND (%s::int IS NULL OR version = %s::int)",
            (name, version, version),
        )
        if found is None:
            raise LookupError(f"training dataset {name!r} version {version or 'latest'} does not exist")
        return TrainingDataset(self, name, int(found))


@dataclass(frozen=True)
class FeatureGroup:
    store: FeatureStore
    name: str
    version: int

    @property
    def table(self) -> str:
        """The exact version's table name, `<name>_<version>`."""
        return f"{self.name}_{self.version}"

    def schema(self) -> pd.DataFrame:
        """The columns: name, SQL type, nullable, primary_key, event_time."""
        return self.store.sql(
            "SELECT name, type, nullable, primary_key, event_time FROM quiver.features "
            "WHERE feature_group = %s AND version = %s ORDER BY position",
            (self.name, self.version),
        )

    def insert(self, frame: pd.DataFrame) -> int:
        """Appends the DataFrame's rows with a binary COPY (columns matched by name); returns the
        number of rows written. Both stores have them when this returns, for an online group."""
        schema = self.schema()
        types = dict(zip(schema["name"], schema["type"]))
        unknown = [c for c in frame.columns if c not in types]
        if unknown:
            raise KeyError(f"{self.table} has no columns {unknown}")
        columns = [str(c) for c in frame.columns]
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
            sql.Identifier(self.table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with self.store.conn.cursor() as cur:
            with cur.copy(statement) as copy:
                copy.set_types([types[c] for c in columns])
                for row in frame.itertuples(index=False, name=None):
                    copy.write_row([_python_value(v) for v in row])
            return cur.rowcount

    def read(self, online: bool = False, dataframe_type: str = "pandas"):
        """The offline history, or with `online=True` the latest row per key, as a pandas
        DataFrame (or a pyarrow Table with `dataframe_type="arrow"`)."""
        table = sql.Identifier("online", self.table) if online else sql.Identifier(self.table)
        frame = self.store.sql(sql.SQL("SELECT * FROM {}").format(table))
        if dataframe_type == "arrow":
            import pyarrow

            return pyarrow.Table.from_pandas(frame, preserve_index=False)
        if dataframe_type != "pandas":
            raise ValueError("dataframe_type is 'pandas' or 'arrow'")
        return frame


@dataclass(frozen=True)
class FeatureView:
    store: FeatureStore
    name: str
    version: int

    @property
    def qualified_name(self) -> str:
        return f"{self.name}_{self.version}"

    def read(self) -> pd.DataFrame:
        return self.store.sql(sql.SQL("SELECT * FROM {}").format(sql.Identifier(self.qualified_name)))

    def create_training_dataset(
        self,
        name: str,
        format: str = "parquet",
        splits: Optional[Mapping[str, float]] = None,
        seed: Optional[int] = None,
        split_by_time: Optional[Mapping[str, str]] = None,
        time_column: Optional[str] = None,
        location: Optional[str] = None,
        version: Optional[int] = None,
        compression: Optional[str] = None,
    ) -> "TrainingDataset":
        """CREATE TRAINING DATASET name FROM FEATURE VIEW this FORMAT ... with a random split
        (`splits={"train": 0.8, "test": 0.2}`, `seed`) or a split by time
        (`split_by_time={"train": "< '2026-06-01 00:00:00'", "test": ">= '2026-06-01 00:00:00'"}`)."""
        parts = [
            sql.SQL("CREATE TRAINING DATASET {}").format(sql.Identifier(name)),
            sql.SQL("VERSION {}").format(sql.Literal(version)) if version else None,
            sql.SQL("FROM FEATURE VIEW {} VERSION {}").format(sql.Identifier(self.name), sql.Literal(self.version)),
            sql.SQL("FORMAT {}").format(sql.SQL(format)),
            sql.SQL("(compression = {})").format(sql.Literal(compression)) if compression else None,
        ]
        if splits and split_by_time:
            raise ValueError("give splits or split_by_time, not both")
        if splits:
            weights = sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(split), sql.Literal(weight)) for split, weight in splits.items()
            )
            parts.append(sql.SQL("SPLIT ({})").format(weights))
            if seed is not None:
                parts.append(sql.SQL("SEED {}").format(sql.Literal(seed)))
        if split_by_time:
            bounds = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(split), sql.SQL(bound)) for split, bound in split_by_time.items()
            )
            column = sql.SQL(" {}").format(sql.Identifier(time_column)) if time_column else sql.SQL("")
            parts.append(sql.SQL("SPLIT BY TIME{} ({})").format(column, bounds))
        if location is not None:
            parts.append(sql.SQL("LOCATION {}").format(sql.Literal(location)))
        self.store.conn.execute(sql.SQL(" ").join(p for p in parts if p is not None))
        return TrainingDataset(self.store, name, version or 1)

    def get_feature_vector(self, *key: Any) -> dict:
        """The served feature vector for one key (several values for a composite key), from the
        online store, transformed as the training data was; an empty dict if the key is unknown."""
        placeholders = sql.SQL(", ").join(sql.Placeholder() * len(key))
        frame = self.store.sql(
            sql.SQL("SELECT * FROM feature_vector({}, {})").format(sql.Literal(self.qualified_name), placeholders),
            key,
        )
        return {} if frame.empty else frame.iloc[0].to_dict()

    def get_feature_vectors(self, keys: Iterable[Any]) -> pd.DataFrame:
        """The served feature vectors for many single-column keys, one row each."""
        return self.store.sql(
            sql.SQL("SELECT * FROM feature_vectors({}, %s)").format(sql.Literal(self.qualified_name)),
            (list(keys),),
        )


@dataclass(frozen=True)
class TrainingDataset:
    store: FeatureStore
    name: str
    version: int

    def describe(self) -> dict:
        """The catalog's record: format, location, split, seed, rows per split, label, ..."""
        frame = self.store.sql(
            "SELECT * FROM quiver.training_datasets WHERE name = %s AND version = %s", (self.name, self.version)
        )
        if frame.empty:
            raise LookupError(f"training dataset {self.name!r} version {self.version} does not exist")
        return frame.iloc[0].to_dict()

    @property
    def label(self) -> Optional[str]:
        return self.describe()["label"]

    def to_pandas(self, split: str = "train") -> pd.DataFrame:
        """A split's rows, read by the server with training_dataset(name, version, split)."""
        return self.store.sql(
            sql.SQL("SELECT * FROM training_dataset({}, {}, {})").format(
                sql.Literal(self.name), sql.Literal(self.version), sql.Literal(split)
            )
        )

    def _features_and_label(self, split: str, label: Optional[str]):
        frame = self.to_pandas(split)
        label = label if label is not None else self.label
        if label is None:
            return frame, None
        return frame.drop(columns=[label]), frame[label]

    def to_tf_dataset(self, split: str = "train", label: Optional[str] = None, batch_size: Optional[int] = None):
        """A tf.data.Dataset of (features by column, label) pairs; only features without a label."""
        import tensorflow as tf

        features, labels = self._features_and_label(split, label)
        columns = {c: features[c].to_numpy() for c in features.columns}
        dataset = tf.data.Dataset.from_tensor_slices(columns if labels is None else (columns, labels.to_numpy()))
        return dataset.batch(batch_size) if batch_size else dataset

    def to_torch(self, split: str = "train", label: Optional[str] = None):
        """A torch TensorDataset of (float32 feature row, label); every feature must be numeric."""
        import torch

        features, labels = self._features_and_label(split, label)
        tensors = [torch.tensor(features.to_numpy(dtype="float32"))]
        if labels is not None:
            tensors.append(torch.tensor(labels.to_numpy()))
        return torch.utils.data.TensorDataset(*tensors)

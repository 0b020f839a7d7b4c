//! The catalog's objects: projects, users, feature groups and plain tables.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{ProjectRole, ScramVerifier};

/// A PostgreSQL object identifier. Ours start at 16384, where PostgreSQL's user objects start.
pub type Oid = u32;

/// The first OID handed to a user object, as in PostgreSQL (`FirstNormalObjectId`).
pub const FIRST_USER_OID: Oid = 16384;

/// The column types a feature group or table may have (the spec's "Types").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    Boolean,
    SmallInt,
    Integer,
    BigInt,
    Real,
    DoublePrecision,
    Text,
    /// VARCHAR with its optional length limit, which is enforced on write.
    Varchar(Option<u32>),
    Bytea,
    Date,
    Timestamp,
    TimestampTz,
    /// A one-dimensional array of a numeric element type (embeddings).
    Array(Box<ColumnType>),
}

impl ColumnType {
    /// Whether values of this type have an order, as event times and ASOF times need.
    pub fn is_orderable_time(&self) -> bool {
        matches!(
            self,
            ColumnType::Date
                | ColumnType::Timestamp
                | ColumnType::TimestampTz
                | ColumnType::SmallInt
                | ColumnType::Integer
                | ColumnType::BigInt
        )
    }

    /// Whether this type may be the element of an array column.
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            ColumnType::SmallInt
                | ColumnType::Integer
                | ColumnType::BigInt
                | ColumnType::Real
                | ColumnType::DoublePrecision
        )
    }

    /// Whether a primary key may use this type (arrays and floats make poor keys).
    pub fn is_key_type(&self) -> bool {
        !matches!(
            self,
            ColumnType::Array(_) | ColumnType::Real | ColumnType::DoublePrecision
        )
    }

    /// The PostgreSQL spelling of the type, as `format_type` prints it.
    pub fn sql_name(&self) -> String {
        match self {
            ColumnType::Boolean => "boolean".into(),
            ColumnType::SmallInt => "smallint".into(),
            ColumnType::Integer => "integer".into(),
            ColumnType::BigInt => "bigint".into(),
            ColumnType::Real => "real".into(),
            ColumnType::DoublePrecision => "double precision".into(),
            ColumnType::Text => "text".into(),
            ColumnType::Varchar(None) => "character varying".into(),
            ColumnType::Varchar(Some(n)) => format!("character varying({n})"),
            ColumnType::Bytea => "bytea".into(),
            ColumnType::Date => "date".into(),
            ColumnType::Timestamp => "timestamp without time zone".into(),
            ColumnType::TimestampTz => "timestamp with time zone".into(),
            ColumnType::Array(element) => format!("{}[]", element.sql_name()),
        }
    }
}

/// A shard of the online store's key space, served by one Raft group of the cluster (its data
/// group). A row belongs to the shard whose hash range holds the hash of its encoded primary key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub id: u32,
    /// The Raft group that replicates the shard's online writes.
    pub raft_group: u32,
    /// The first and last key hash of the shard, inclusive.
    pub hash_start: u64,
    pub hash_end: u64,
}

impl Shard {
    /// One shard, served by `raft_group`, for the whole key space.
    pub fn whole(raft_group: u32) -> Shard {
        Shard {
            id: 0,
            raft_group,
            hash_start: 0,
            hash_end: u64::MAX,
        }
    }

    /// Checks that `shards`, in order, cover the hash space once: no gap, no overlap.
    pub fn check_cover(shards: &[Shard]) -> Result<(), String> {
        let mut next = Some(0u64);
        for shard in shards {
            if Some(shard.hash_start) != next || shard.hash_end < shard.hash_start {
                return Err(format!(
                    "shard {} does not start where the previous one ends",
                    shard.id
                ));
            }
            next = shard.hash_end.checked_add(1);
        }
        match next {
            None => Ok(()),
            Some(_) => Err("the shards do not cover every key".into()),
        }
    }
}

/// One column of a feature group or table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub data_type: ColumnType,
    pub nullable: bool,
    pub description: Option<String>,
}

impl Column {
    /// A column without a description.
    pub fn new(name: &str, data_type: ColumnType, nullable: bool) -> Column {
        Column {
            name: name.to_string(),
            data_type,
            nullable,
            description: None,
        }
    }
}

/// What a relation is: the catalog keeps feature groups and plain tables side by side because they
/// share one namespace inside a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelationKind {
    FeatureGroup(FeatureGroupSpec),
    Table,
}

/// The parts of a relation that only feature groups have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureGroupSpec {
    pub version: u32,
    /// The column whose value orders rows of one key; without it the commit order does.
    pub event_time: Option<String>,
    pub options: FeatureGroupOptions,
}

/// The options a feature group version carries, settable at creation and by ALTER ... SET.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureGroupOptions {
    pub online: bool,
    /// Rows older than this many seconds (by event time) are not served online nor matched by ASOF.
    pub ttl_seconds: Option<i64>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    /// The partitioning expression as written, e.g. `day(ts)`.
    pub partition_by: Option<String>,
}

/// A change to some of a feature group version's options; `None` leaves an option as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureGroupOptionsPatch {
    pub online: Option<bool>,
    pub ttl_seconds: Option<Option<i64>>,
    pub description: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
}

impl FeatureGroupOptions {
    /// Applies a patch, leaving the options it does not name unchanged.
    pub fn apply(&mut self, patch: &FeatureGroupOptionsPatch) {
        if let Some(online) = patch.online {
            self.online = online;
        }
        if let Some(ttl) = patch.ttl_seconds {
            self.ttl_seconds = ttl;
        }
        if let Some(description) = &patch.description {
            self.description = description.clone();
        }
        if let Some(tags) = &patch.tags {
            self.tags = tags.clone();
        }
    }
}

/// A feature group version or a plain table: something with rows in the offline store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    pub oid: Oid,
    pub project: String,
    /// The name without version: `transactions`, never `transactions_1`.
    pub name: String,
    pub kind: RelationKind,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    pub owner: String,
    pub created_at: DateTime<Utc>,
}

impl Relation {
    /// The name SQL uses for this exact relation: `<name>_<version>` for a feature group version.
    pub fn qualified_name(&self) -> String {
        match &self.kind {
            RelationKind::FeatureGroup(spec) => format!("{}_{}", self.name, spec.version),
            RelationKind::Table => self.name.clone(),
        }
    }

    /// The feature-group parts, or `None` for a plain table.
    pub fn feature_group(&self) -> Option<&FeatureGroupSpec> {
        match &self.kind {
            RelationKind::FeatureGroup(spec) => Some(spec),
            RelationKind::Table => None,
        }
    }

    /// The column with this name, if any.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A project: a PostgreSQL database, the unit of multi-tenancy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub oid: Oid,
    pub name: String,
    pub description: Option<String>,
    pub owner: String,
    pub created_at: DateTime<Utc>,
    /// Who may use the project, and as what. The creator is its first data owner; superusers
    /// need no membership.
    #[serde(default)]
    pub members: BTreeMap<String, ProjectRole>,
    /// Feature groups (by name, every version) this project lets other projects read, with
    /// the projects each is shared with.
    #[serde(default)]
    pub shares: BTreeMap<String, BTreeSet<String>>,
}

/// A user that may connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub oid: Oid,
    pub name: String,
    pub superuser: bool,
    /// None: the user cannot log in when passwords are required.
    #[serde(default)]
    pub password: Option<ScramVerifier>,
    /// At most this many connections at once (`CONNECTION LIMIT`); None: no limit of its own.
    #[serde(default)]
    pub connection_limit: Option<u32>,
}

/// A fitted-at-training-time transformation of one feature view column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransformKind {
    /// `(x - mean) / stddev`.
    StandardScaler,
    /// `(x - min) / (max - min)`.
    MinMaxScaler,
    /// One 0/1 column per category seen in the train split.
    OneHot,
    /// The category's index among the train split's sorted categories.
    LabelEncoder,
}

impl TransformKind {
    /// Every transformation, by the name SQL uses for it.
    pub const ALL: [(&'static str, TransformKind); 4] = [
        ("standard_scaler", TransformKind::StandardScaler),
        ("min_max_scaler", TransformKind::MinMaxScaler),
        ("one_hot", TransformKind::OneHot),
        ("label_encoder", TransformKind::LabelEncoder),
    ];

    /// The name SQL uses for this transformation.
    pub fn sql_name(self) -> &'static str {
        TransformKind::ALL
            .iter()
            .find(|(_, kind)| *kind == self)
            .map(|(name, _)| *name)
            .unwrap_or("unknown")
    }
}

/// A transformation a feature view applies to one of its columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transform {
    pub column: String,
    pub kind: TransformKind,
}

/// A column of a query's result, as listings show it: its name and PostgreSQL type name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultColumn {
    pub name: String,
    pub type_name: String,
}

/// A feature view: the named, versioned query whose columns a model trains on and is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureView {
    /// Assigned by the catalog when the view is created.
    pub oid: Oid,
    pub project: String,
    pub name: String,
    pub version: u32,
    /// The query, with every feature group it reads named by its exact version, so a new version
    /// of a group never changes what the view means.
    pub query: String,
    pub columns: Vec<ResultColumn>,
    /// The column a model predicts; part of training data, never of a served feature vector.
    pub label: Option<String>,
    pub transforms: Vec<Transform>,
    pub description: Option<String>,
    /// The relations the query reads; they cannot be dropped while the view exists.
    pub depends_on: Vec<Oid>,
    pub owner: String,
    pub created_at: DateTime<Utc>,
}

impl FeatureView {
    /// The name SQL uses for this exact version: `<name>_<version>`.
    pub fn qualified_name(&self) -> String {
        format!("{}_{}", self.name, self.version)
    }
}

/// The file format a training dataset is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DatasetFormat {
    Tfrecords,
    Parquet,
    Csv,
    Npy,
    Hdf5,
    Arrow,
}

impl DatasetFormat {
    /// Every format, by the name SQL uses for it.
    pub const ALL: [(&'static str, DatasetFormat); 6] = [
        ("tfrecords", DatasetFormat::Tfrecords),
        ("parquet", DatasetFormat::Parquet),
        ("csv", DatasetFormat::Csv),
        ("npy", DatasetFormat::Npy),
        ("hdf5", DatasetFormat::Hdf5),
        ("arrow", DatasetFormat::Arrow),
    ];

    /// The name SQL uses for this format.
    pub fn sql_name(self) -> &'static str {
        DatasetFormat::ALL
            .iter()
            .find(|(_, format)| *format == self)
            .map(|(name, _)| *name)
            .unwrap_or("unknown")
    }
}

/// A comparison of a split's time bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeComparison {
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl TimeComparison {
    /// The SQL operator.
    pub fn symbol(self) -> &'static str {
        match self {
            TimeComparison::Lt => "<",
            TimeComparison::LtEq => "<=",
            TimeComparison::Gt => ">",
            TimeComparison::GtEq => ">=",
        }
    }
}

/// How the rows of a training dataset are divided into splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Split {
    /// Every row is in the one split `train`.
    None,
    /// Each row goes to a split by a hash of its values and the seed, with these weights.
    Random {
        weights: Vec<(String, f64)>,
        seed: u64,
    },
    /// Each row goes to the first split whose bound its time column meets.
    ByTime {
        column: String,
        bounds: Vec<(String, TimeComparison, String)>,
    },
}

impl Split {
    /// The names of the splits, in the order they were written.
    pub fn names(&self) -> Vec<String> {
        match self {
            Split::None => vec!["train".into()],
            Split::Random { weights, .. } => weights.iter().map(|(n, _)| n.clone()).collect(),
            Split::ByTime { bounds, .. } => bounds.iter().map(|(n, _, _)| n.clone()).collect(),
        }
    }
}

/// A transformation with the parameters it learnt from a training dataset's train split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FittedTransform {
    StandardScaler {
        column: String,
        mean: f64,
        stddev: f64,
    },
    MinMaxScaler {
        column: String,
        min: f64,
        max: f64,
    },
    /// The categories are the train split's distinct values as text, sorted.
    OneHot {
        column: String,
        categories: Vec<String>,
    },
    LabelEncoder {
        column: String,
        categories: Vec<String>,
    },
}

impl FittedTransform {
    /// The column this transformation reads.
    pub fn column(&self) -> &str {
        match self {
            FittedTransform::StandardScaler { column, .. }
            | FittedTransform::MinMaxScaler { column, .. }
            | FittedTransform::OneHot { column, .. }
            | FittedTransform::LabelEncoder { column, .. } => column,
        }
    }
}

/// Where a training dataset's rows came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DatasetSource {
    FeatureView { name: String, version: u32 },
    Query,
}

/// A training dataset version: files written once from a query, and everything needed to write
/// the same files again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingDataset {
    /// Assigned by the catalog when the dataset is created.
    pub oid: Oid,
    pub project: String,
    pub name: String,
    pub version: u32,
    pub source: DatasetSource,
    /// The query evaluated, feature groups named by exact version.
    pub query: String,
    pub label: Option<String>,
    pub format: DatasetFormat,
    /// Whether the files are gzip-compressed (tfrecords only).
    pub gzip: bool,
    /// The URL of the directory holding `<split>/` subdirectories.
    pub location: String,
    pub split: Split,
    /// The columns written, after transformations.
    pub columns: Vec<ResultColumn>,
    /// The Arrow schema of the files, as JSON, for reading them back.
    pub file_schema: String,
    /// Rows written per split, in the split's order.
    pub split_rows: Vec<(String, u64)>,
    /// The offline table version of every relation read, by OID.
    pub read_versions: Vec<(Oid, u64)>,
    pub transforms: Vec<FittedTransform>,
    pub owner: String,
    pub created_at: DateTime<Utc>,
}

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelTask {
    /// A number.
    Regression,
    /// The probability that the label is the positive one of its two classes.
    BinaryClassification,
}

impl ModelTask {
    /// The name listings show.
    pub fn sql_name(self) -> &'static str {
        match self {
            ModelTask::Regression => "regression",
            ModelTask::BinaryClassification => "binary_classification",
        }
    }
}

/// A model version: an artifact fitted on a training dataset's train split, and what it needs to
/// score rows the way it was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Assigned by the catalog when the model is registered.
    pub oid: Oid,
    pub project: String,
    pub name: String,
    pub version: u32,
    pub algorithm: String,
    pub task: ModelTask,
    /// The hyperparameters the algorithm ran with, as a JSON object (defaults filled in).
    pub params: String,
    pub label: String,
    /// For classification, the label's two values as text: negative, then positive.
    pub classes: Vec<String>,
    /// The columns `predict` takes, in order, before the transformations.
    pub inputs: Vec<ResultColumn>,
    /// The columns the algorithm reads, in order, after the transformations.
    pub features: Vec<String>,
    /// The transformations of the training dataset, applied to the inputs before scoring.
    pub transforms: Vec<FittedTransform>,
    pub training_dataset: String,
    pub training_dataset_version: u32,
    /// The feature view the training dataset came from, if any: `serve` reads it online.
    pub feature_view: Option<(String, u32)>,
    /// Evaluated on the training dataset's test split.
    pub metrics: Vec<(String, f64)>,
    /// The URL of the serialized model.
    pub artifact: String,
    /// The experiment run that trained it.
    pub run_id: String,
    pub owner: String,
    pub created_at: DateTime<Utc>,
}

/// One training run, as an experiment tracker records it: whether or not it became a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRun {
    pub run_id: String,
    pub project: String,
    pub model: String,
    /// The version registered from this run, if it was.
    pub model_version: Option<u32>,
    pub algorithm: String,
    /// As a JSON object.
    pub params: String,
    pub metrics: Vec<(String, f64)>,
    pub training_dataset: String,
    pub training_dataset_version: u32,
    pub duration_ms: u64,
    pub user: String,
    pub started_at: DateTime<Utc>,
}

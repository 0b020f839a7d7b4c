//! The catalog's error type. Each variant says what a user did wrong (or what broke) so the server
//! edge can map it to a SQLSTATE.

/// Errors from the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("column \"{column}\" specified more than once in \"{relation}\"")]
    DuplicateColumn { relation: String, column: String },
    #[error("column \"{column}\" of relation \"{relation}\" does not exist")]
    UndefinedColumn { relation: String, column: String },
    #[error("project \"{0}\" does not exist")]
    UndefinedProject(String),
    #[error("role \"{0}\" does not exist")]
    UndefinedRole(String),
    #[error("{0}")]
    InvalidShare(String),
    /// A shard map that does not cover the key space once.
    #[error("invalid shard map: {0}")]
    InvalidShard(String),
    #[error("feature group \"{0}\" does not exist")]
    UndefinedFeatureGroup(String),
    #[error("{kind} \"{name}\" has no version {version}")]
    UndefinedVersion {
        kind: &'static str,
        name: String,
        version: u32,
    },
    /// A feature view or training dataset that does not exist.
    #[error("{kind} \"{name}\" does not exist")]
    UndefinedObject { kind: &'static str, name: String },
    #[error("relation \"{0}\" does not exist")]
    UndefinedRelation(String),
    #[error("cannot drop: {0}")]
    DependentObjects(String),
    /// A Raft group of the cluster cannot take the command or read now: no leader, no quorum, or
    /// a peer that does not answer (the message names the group).
    #[error("{0}")]
    Unavailable(String),
    /// The replicated state machine refused a command when it was applied (it was valid when
    /// proposed; a concurrent command made it invalid).
    #[error("{0}")]
    Rejected(String),
    #[error("catalog log {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("catalog log {path} is corrupt at entry {entry}: {message}")]
    CorruptLog {
        path: String,
        entry: u64,
        message: String,
    },
}

/// A catalog result.
pub type CatalogResult<T> = Result<T, CatalogError>;

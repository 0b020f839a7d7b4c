//! The storage layer's error type.

use std::path::Path;

/// Errors from the offline store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("offline table {0} is missing from the store")]
    MissingTable(u32),
    #[error("table {0} has no online data")]
    MissingOnlineTable(u32),
    #[error("invalid storage location {0}")]
    InvalidLocation(String),
    #[error("unsupported schema for the offline store: {0}")]
    Schema(String),
    #[error("offline store: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    #[error("offline store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("offline store: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    #[error("offline store: {0}")]
    Internal(String),
    /// Columns a training dataset format cannot hold.
    #[error("{0}")]
    UnsupportedFormat(String),
    /// A NULL where the target format has no way to hold one.
    #[error("{0}")]
    NullNotAllowed(String),
    #[error("{0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("{0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
}

impl StorageError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// A storage result.
pub type StorageResult<T> = Result<T, StorageError>;

//! Quiver's storage layer: the offline store (full history, Delta Lake tables of Parquet files, on a
//! local disk or S3).
//!
//! Architecture invariant: this crate knows tables by id and Arrow schema only; it never reads the
//! catalog and never parses SQL. A write it acknowledges is atomic and durable.

mod error;
mod location;
mod offline;
mod online;

pub use error::{StorageError, StorageResult};
pub use location::StoreLocation;
pub use offline::{Commit, OfflineStore, SEQUENCE_COLUMN, TableId};
pub use online::{OnlineLayout, OnlineStore};

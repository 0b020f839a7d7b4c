//! Quiver's storage layer: the offline store (full history, Delta Lake tables of Parquet files, on a
//! local disk or S3), the online store (RocksDB) and training dataset files.
//!
//! Architecture invariant: this crate knows tables by id and Arrow schema only; it never reads the
//! catalog and never parses SQL. A write it acknowledges is atomic and durable.

mod artifact;
mod block_file;
mod dataset;
mod error;
mod hdf5_file;
mod location;
mod multi_table;
mod npy;
mod offline;
mod online;
mod online_value;
mod parquet_file;
mod tfrecord;

pub use artifact::{delete_object, object_url, read_object, write_object};
pub use dataset::{DatasetWriter, FileFormat, publish, remove_splits, splits_exist};
pub use error::{StorageError, StorageResult};
pub use location::StoreLocation;
pub use multi_table::{MultiTableCommit, TableWrite};
pub use offline::{Commit, OfflineStore, SEQUENCE_COLUMN, TableId};
pub use online::{OnlineLayout, OnlineStore, StoredRows};
pub use online_value::StoredValue;

/// Runs `work` on the blocking pool: file IO, fsyncs and RocksDB calls that may touch the disk
/// never run on the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::Internal(format!("a storage task failed: {e}")))?
}

/// Fsyncs a file or a directory (a directory's entries: files created or renamed in it).
pub(crate) fn sync_path(path: &std::path::Path) -> StorageResult<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| StorageError::io(path, e))
}

/// The cores this process may use: how many threads a writer shares its encoding among.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `task` on each item, the first on this thread and the others on threads of their own, and
/// returns the results in the items' order. For CPU-bound encoding that a file writer shares out
/// (parquet columns, tfrecords rows); the threads live for one call.
pub(crate) fn on_threads<I, T>(
    items: I,
    task: impl Fn(I::Item) -> StorageResult<T> + Sync,
) -> StorageResult<Vec<T>>
where
    I: IntoIterator,
    I::Item: Send,
    T: Send,
{
    let mut items = items.into_iter();
    let Some(first) = items.next() else {
        return Ok(Vec::new());
    };
    let task = &task;
    std::thread::scope(|scope| {
        let others: Vec<_> = items.map(|item| scope.spawn(move || task(item))).collect();
        let mut results = vec![task(first)];
        for other in others {
            results.push(other.join().unwrap_or_else(|_| {
                Err(StorageError::Internal(
                    "a thread encoding a training dataset file panicked".into(),
                ))
            }));
        }
        results.into_iter().collect()
    })
}

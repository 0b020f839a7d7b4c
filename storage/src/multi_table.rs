//! A commit that spans several offline tables (a transaction block's writes), written down in the
//! data directory before any of the tables is touched.
//!
//! Delta commits one table at a time. To make several tables' writes all-or-nothing across a
//! crash, the writer first records every table's rows and delete predicate here (fsynced, then
//! published by renaming its directory), then commits table by table, tagging each table's last
//! commit with the record's tag, and forgets the record when all are done. At start, a record
//! still present is finished: a table whose log holds a commit with the tag after the version
//! recorded is done, any other is written again. A record whose directory was never renamed into
//! place was never acted on and is deleted.
//!
//! The file IO runs on the blocking pool.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use serde::{Deserialize, Serialize};

use crate::error::{StorageError, StorageResult};
use crate::offline::TableId;
use crate::{blocking, sync_path};

/// The name of a record being written, before it is renamed to its tag.
const PARTIAL_SUFFIX: &str = ".partial";
/// The name of a record done with, while it is being deleted.
const FORGOTTEN_SUFFIX: &str = ".forgotten";
const MANIFEST: &str = "manifest.json";

/// The writes of one table within a [`MultiTableCommit`].
#[derive(Debug, Clone)]
pub struct TableWrite {
    pub table: TableId,
    /// The table's version before the commit: a commit carrying the tag after it means done.
    pub after: u64,
    /// Rows matching this predicate (SQL text over the table's columns) are deleted first.
    pub delete: Option<String>,
    /// Then these rows are appended.
    pub rows: Vec<RecordBatch>,
}

/// Writes to several tables that must all happen.
#[derive(Debug, Clone)]
pub struct MultiTableCommit {
    /// Unique among records; each table's last commit carries it.
    pub tag: String,
    pub tables: Vec<TableWrite>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    tables: Vec<ManifestTable>,
}

#[derive(Serialize, Deserialize)]
struct ManifestTable {
    table: TableId,
    after: u64,
    delete: Option<String>,
    /// The Arrow IPC file holding the rows, if there are any.
    rows: Option<String>,
}

impl MultiTableCommit {
    /// Writes the record durably under `dir` (created if missing): once this returns, a crash
    /// leaves the commit to be finished at the next start.
    pub async fn record(&self, dir: &Path) -> StorageResult<()> {
        let (record, dir) = (self.clone(), dir.to_path_buf());
        blocking(move || record.record_blocking(&dir)).await
    }

    fn record_blocking(&self, dir: &Path) -> StorageResult<()> {
        let target = dir.join(&self.tag);
        let partial = dir.join(format!("{}{PARTIAL_SUFFIX}", self.tag));
        std::fs::create_dir_all(&partial).map_err(|e| StorageError::io(&partial, e))?;
        let mut manifest = Manifest { tables: Vec::new() };
        for write in &self.tables {
            let rows = match write.rows.first() {
                None => None,
                Some(first) => {
                    let name = format!("{}.arrow", write.table);
                    let path = partial.join(&name);
                    let file = File::create(&path).map_err(|e| StorageError::io(&path, e))?;
                    let mut writer = FileWriter::try_new(file, first.schema_ref())?;
                    for batch in &write.rows {
                        writer.write(batch)?;
                    }
                    writer.finish()?;
                    writer
                        .into_inner()?
                        .sync_all()
                        .map_err(|e| StorageError::io(&path, e))?;
                    Some(name)
                }
            };
            manifest.tables.push(ManifestTable {
                table: write.table,
                after: write.after,
                delete: write.delete.clone(),
                rows,
            });
        }
        let path = partial.join(MANIFEST);
        let text = serde_json::to_vec(&manifest)
            .map_err(|e| StorageError::Internal(format!("cannot encode a commit record: {e}")))?;
        let mut file = File::create(&path).map_err(|e| StorageError::io(&path, e))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(|e| StorageError::io(&path, e))?;
        sync_path(&partial)?;
        std::fs::rename(&partial, &target).map_err(|e| StorageError::io(&target, e))?;
        sync_path(dir)
    }

    /// The records under `dir` not forgotten yet, oldest first; records never published (a crash
    /// while writing one) and records forgotten part-way are deleted.
    pub async fn recorded(dir: &Path) -> StorageResult<Vec<MultiTableCommit>> {
        let dir = dir.to_path_buf();
        blocking(move || Self::recorded_blocking(&dir)).await
    }

    fn recorded_blocking(dir: &Path) -> StorageResult<Vec<MultiTableCommit>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::io(dir, e)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| StorageError::io(dir, e))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if name.ends_with(PARTIAL_SUFFIX) || name.ends_with(FORGOTTEN_SUFFIX) {
                std::fs::remove_dir_all(&path).map_err(|e| StorageError::io(&path, e))?;
                continue;
            }
            records.push(read_record(&path, name)?);
        }
        records.sort_by(|a, b| a.tag.cmp(&b.tag));
        Ok(records)
    }

    /// Deletes the record once every table has its writes. It is renamed first: a crash while
    /// its files are deleted must not leave a record with half its files.
    pub async fn forget(&self, dir: &Path) -> StorageResult<()> {
        let path = dir.join(&self.tag);
        let forgotten = dir.join(format!("{}{FORGOTTEN_SUFFIX}", self.tag));
        let dir = dir.to_path_buf();
        blocking(move || {
            std::fs::rename(&path, &forgotten).map_err(|e| StorageError::io(&path, e))?;
            sync_path(&dir)?;
            std::fs::remove_dir_all(&forgotten).map_err(|e| StorageError::io(&forgotten, e))
        })
        .await
    }
}

fn read_record(path: &Path, tag: String) -> StorageResult<MultiTableCommit> {
    let manifest_path = path.join(MANIFEST);
    let text = std::fs::read(&manifest_path).map_err(|e| StorageError::io(&manifest_path, e))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        StorageError::Internal(format!(
            "the commit record {} is unreadable: {e}",
            manifest_path.display()
        ))
    })?;
    let mut tables = Vec::with_capacity(manifest.tables.len());
    for table in manifest.tables {
        let rows = match &table.rows {
            None => Vec::new(),
            Some(name) => {
                let rows_path: PathBuf = path.join(name);
                let file = File::open(&rows_path).map_err(|e| StorageError::io(&rows_path, e))?;
                FileReader::try_new(file, None)?.collect::<Result<Vec<_>, _>>()?
            }
        };
        tables.push(TableWrite {
            table: table.table,
            after: table.after,
            delete: table.delete,
            rows,
        });
    }
    Ok(MultiTableCommit { tag, tables })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn rows(values: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    #[tokio::test]
    async fn a_record_reads_back_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let commit = MultiTableCommit {
            tag: "t1".into(),
            tables: vec![
                TableWrite {
                    table: 7,
                    after: 3,
                    delete: Some("id = 1".into()),
                    rows: vec![rows(vec![1, 2]), rows(vec![3])],
                },
                TableWrite {
                    table: 9,
                    after: 0,
                    delete: Some("id IN (4, 5)".into()),
                    rows: Vec::new(),
                },
            ],
        };
        commit.record(dir.path()).await.unwrap();
        let read = MultiTableCommit::recorded(dir.path()).await.unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].tag, "t1");
        assert_eq!(read[0].tables.len(), 2);
        assert_eq!(read[0].tables[0].after, 3);
        assert_eq!(read[0].tables[0].delete.as_deref(), Some("id = 1"));
        assert_eq!(
            read[0].tables[0].rows,
            vec![rows(vec![1, 2]), rows(vec![3])]
        );
        assert!(read[0].tables[1].rows.is_empty());
        read[0].forget(dir.path()).await.unwrap();
        assert!(
            MultiTableCommit::recorded(dir.path())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn records_never_published_or_forgotten_part_way_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        for suffix in [PARTIAL_SUFFIX, FORGOTTEN_SUFFIX] {
            std::fs::create_dir_all(dir.path().join(format!("t2{suffix}"))).unwrap();
        }
        assert!(
            MultiTableCommit::recorded(dir.path())
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

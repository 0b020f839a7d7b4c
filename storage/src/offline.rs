//! The offline store: one Delta Lake table of Parquet files per relation, under `<root>/<oid>/`.
//!
//! Delta gives us what the feature store needs from its history: commits are atomic (a statement's
//! files become visible through one log entry), every version stays readable (time travel for
//! training datasets), file statistics let scans skip files by event time, and any Delta reader
//! (Spark, DuckDB, polars, pyarrow) reads the tables without Quiver.
//!
//! The store lives in a local directory or under an S3 prefix (see `location`). What Delta
//! (through object_store) does not do on a local disk is fsync: a commit here is acknowledged only
//! after its data files, its log entry and their directories are synced, so an acknowledged write
//! survives a crash of the machine, not only of the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::Field;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructField, StructType};
use deltalake::parquet::arrow::ArrowSchemaConverter;
use deltalake::parquet::basic::{Compression, Encoding, Type as PhysicalType};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::Mutex;
use url::Url;

use crate::error::{StorageError, StorageResult};
use crate::location::StoreLocation;

/// Identifies one table of the offline store; the catalog's OID of the relation.
pub type TableId = u32;

/// The hidden column of a feature group's offline table that orders its rows: the commit version
/// in the high 32 bits, the row's number within the commit in the low 32. Filled in by `append`.
pub const SEQUENCE_COLUMN: &str = "__quiver_seq";

/// When a table has more live files than this, a background compaction merges the small ones, so
/// a stream of single-row INSERTs does not leave thousands of tiny files behind.
const COMPACTION_FILE_THRESHOLD: usize = 32;

/// The key, in a commit's `commitInfo`, of the tag a writer gave the commit.
const TRANSACTION_TAG: &str = "quiver.transaction";

/// The target size of a compacted file.
const COMPACTION_TARGET_BYTES: u64 = 128 * 1024 * 1024;

/// The offline store of one node.
pub struct OfflineStore {
    location: StoreLocation,
    /// The open tables. Each mutex serialises the writers of one table, so commit order within the
    /// process is the order writers took the lock, and holds the table's newest state.
    tables: std::sync::Mutex<HashMap<TableId, Arc<OpenTable>>>,
    /// Other processes (cluster nodes) commit to these tables too: every use reads the log's
    /// newest commits first, and a commit that loses the race for its version is written again.
    shared: bool,
    /// Whether this process compacts tables. delta-rs lets two concurrent compactions of the
    /// same files both commit (their removes do not change data, so its conflict check passes
    /// them), which doubles rows: of the writers sharing a store exactly one may compact.
    compacts: bool,
}

/// How many times a write to a shared table is attempted when other writers keep taking its
/// version first.
const SHARED_COMMIT_ATTEMPTS: usize = 20;

/// A table this process has open.
struct OpenTable {
    /// Serialises this process's writers of the table (commit order), holding the table as the
    /// last of them left it.
    writer: Mutex<DeltaTable>,
    /// The newest state a writer published: readers never wait for a writer (one may hold the
    /// lock while the online store applies its commit, which can read this table).
    published: std::sync::RwLock<DeltaTable>,
}

impl OpenTable {
    fn new(table: DeltaTable) -> OpenTable {
        OpenTable {
            published: std::sync::RwLock::new(table.clone()),
            writer: Mutex::new(table),
        }
    }

    fn published(&self) -> DeltaTable {
        self.published
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, table: &DeltaTable) {
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = table.clone();
    }
}

/// What a committed write produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// The table version this commit created.
    pub version: u64,
    pub rows: u64,
}

impl std::fmt::Debug for OfflineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineStore")
            .field("location", &self.location)
            .finish()
    }
}

impl OfflineStore {
    /// Whether table `id` exists: its first commit is in place.
    pub async fn has_table(&self, id: TableId) -> StorageResult<bool> {
        let first_commit = format!("{id}/_delta_log/{:020}.json", 0);
        match &self.location {
            StoreLocation::Local(root) => {
                let path = root.join(first_commit);
                tokio::fs::try_exists(&path)
                    .await
                    .map_err(|e| StorageError::io(&path, e))
            }
            StoreLocation::Remote { store, prefix, .. } => {
                match store.head(&child(prefix, &first_commit)).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(StorageError::ObjectStore(e)),
                }
            }
        }
    }

    /// Opens the store at `location`: creates a local directory if needed, checks that a remote
    /// bucket answers.
    pub async fn open(location: &StoreLocation) -> StorageResult<OfflineStore> {
        let location = match location {
            StoreLocation::Local(root) => {
                std::fs::create_dir_all(root).map_err(|e| StorageError::io(root, e))?;
                StoreLocation::Local(root.canonicalize().map_err(|e| StorageError::io(root, e))?)
            }
            StoreLocation::Remote {
                store,
                prefix,
                base,
            } => {
                store.list_with_delimiter(Some(prefix)).await.map_err(|e| {
                    StorageError::InvalidLocation(format!("{base} is not reachable: {e}"))
                })?;
                location.clone()
            }
        };
        Ok(OfflineStore {
            location,
            tables: Default::default(),
            shared: false,
            compacts: true,
        })
    }

    /// Marks the store as shared with other writers (the nodes of a cluster): readers and
    /// writers catch up with commits made elsewhere, and commits are optimistic (Delta's
    /// create-if-absent log entry decides between writers; the loser writes again). Only the
    /// one writer given `compacts` compacts tables.
    pub fn shared_with_other_writers(mut self, compacts: bool) -> OfflineStore {
        self.shared = true;
        self.compacts = compacts;
        self
    }

    /// Brings `table` up to the newest commit in the log when other writers may have added some.
    async fn catch_up(&self, table: &mut DeltaTable) -> StorageResult<()> {
        if self.shared {
            table.update_incremental(None).await?;
        }
        Ok(())
    }

    /// Table `id` at its newest commit (as of this call).
    async fn latest(&self, id: TableId) -> StorageResult<DeltaTable> {
        let mut table = self.table(id).await?.published();
        self.catch_up(&mut table).await?;
        Ok(table)
    }

    /// Commit properties for a write at the table's next version: on a shared store, no
    /// retries inside delta-rs (its retry would keep sequences numbered for the lost version);
    /// the caller writes again.
    fn commit_properties(&self, tag: Option<&str>) -> CommitProperties {
        let mut properties = CommitProperties::default();
        if let Some(tag) = tag {
            properties = properties.with_metadata([(
                TRANSACTION_TAG.to_string(),
                serde_json::Value::String(tag.to_string()),
            )]);
        }
        if self.shared {
            properties.with_max_retries(0)
        } else {
            properties
        }
    }

    /// After a failed commit of version `attempted` on a shared store: whether another writer
    /// took the version (then the caller writes again), reading the newest commits into `table`.
    async fn lost_the_race(
        &self,
        table: &mut DeltaTable,
        attempted: u64,
        attempt: usize,
    ) -> StorageResult<bool> {
        if !self.shared || attempt + 1 >= SHARED_COMMIT_ATTEMPTS {
            return Ok(false);
        }
        self.catch_up(table).await?;
        Ok(table.version().unwrap_or(0) >= attempted)
    }

    /// Where the store is.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// Table `id`'s directory when the store is local; `None` on an object store.
    fn local_dir(&self, id: TableId) -> Option<PathBuf> {
        match &self.location {
            StoreLocation::Local(root) => Some(root.join(id.to_string())),
            StoreLocation::Remote { .. } => None,
        }
    }

    fn table_url(&self, id: TableId) -> StorageResult<Url> {
        match &self.location {
            StoreLocation::Local(root) => {
                let dir = root.join(id.to_string());
                Url::from_directory_path(&dir)
                    .map_err(|()| StorageError::InvalidLocation(dir.display().to_string()))
            }
            StoreLocation::Remote { base, .. } => base
                .join(&format!("{id}/"))
                .map_err(|e| StorageError::InvalidLocation(format!("{base}{id}/: {e}"))),
        }
    }

    /// Creates the empty table `id` with this schema, partitioned by `partition_columns` (which
    /// are columns of the schema). Creating over an existing table fails.
    pub async fn create_table(
        &self,
        id: TableId,
        schema: SchemaRef,
        partition_columns: &[String],
    ) -> StorageResult<()> {
        if let Some(dir) = self.local_dir(id) {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| StorageError::io(&dir, e))?;
        }
        let columns = StructType::try_from_arrow(schema.as_ref())
            .map_err(|e| StorageError::Schema(e.to_string()))?;
        // Built without loading: the location is new, there is no log to read yet.
        let table = DeltaTableBuilder::from_url(self.table_url(id)?)?.build()?;
        let table = table
            .create()
            .with_columns(columns.fields().cloned())
            .with_partition_columns(partition_columns.to_vec())
            .with_save_mode(SaveMode::ErrorIfExists)
            .await?;
        sync_commit(self.local_dir(id), table.version().unwrap_or(0)).await?;
        self.lock_table_map()
            .insert(id, Arc::new(OpenTable::new(table)));
        Ok(())
    }

    fn lock_table_map(&self) -> std::sync::MutexGuard<'_, HashMap<TableId, Arc<OpenTable>>> {
        match self.tables.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    async fn table(&self, id: TableId) -> StorageResult<Arc<OpenTable>> {
        if let Some(table) = self.lock_table_map().get(&id) {
            return Ok(table.clone());
        }
        let url = self.table_url(id)?;
        let table = DeltaTableBuilder::from_url(url)?
            .load()
            .await
            .map_err(|e| match e {
                deltalake::DeltaTableError::NotATable(_) => StorageError::MissingTable(id),
                other => StorageError::Delta(other),
            })?;
        let table = Arc::new(OpenTable::new(table));
        Ok(self.lock_table_map().entry(id).or_insert(table).clone())
    }

    /// Appends the batches as one atomic, durable commit. The batches must have the table's schema
    /// without [`SEQUENCE_COLUMN`], which this fills in when the table has it.
    pub async fn append(&self, id: TableId, batches: Vec<RecordBatch>) -> StorageResult<Commit> {
        self.append_then(id, batches, None, |_| async { Ok(()) })
            .await
    }

    /// [`OfflineStore::append`], then `then` with the durable commit while the table's writer lock
    /// is still held, so whatever `then` does (applying the rows to the online store) happens in
    /// commit order. An error from `then` is returned, but the commit stands. A `tag` is
    /// recorded in the commit (see [`OfflineStore::has_tagged_commit`]).
    pub async fn append_then<F, Fut, E>(
        &self,
        id: TableId,
        batches: Vec<RecordBatch>,
        tag: Option<&str>,
        then: F,
    ) -> Result<Commit, E>
    where
        F: FnOnce(Commit) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: From<StorageError>,
    {
        let handle = self.table(id).await?;
        let mut table = handle.writer.lock().await;
        let (commit, files) = self.commit_append(&mut table, id, batches, tag).await?;
        handle.publish(&table);
        if commit.rows == 0 {
            return Ok(commit);
        }
        let followed = then(commit).await;
        drop(table);
        if files > COMPACTION_FILE_THRESHOLD && self.compacts {
            tokio::spawn(compact(handle, self.local_dir(id)));
        }
        followed.map(|()| commit)
    }

    /// Writes `batches` to `table` (whose writer lock the caller holds) as one durable commit;
    /// returns it and the table's number of live files after it. Nothing is written for no rows.
    async fn commit_append(
        &self,
        table: &mut DeltaTable,
        id: TableId,
        batches: Vec<RecordBatch>,
        tag: Option<&str>,
    ) -> StorageResult<(Commit, usize)> {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        self.catch_up(table).await?;
        if rows == 0 {
            let version = table.version().unwrap_or(0);
            return Ok((Commit { version, rows }, 0));
        }
        let mut attempt = 0;
        let written = loop {
            // Single writer per table in this process (the lock): the commit gets the next
            // version, unless another node's commit takes it first.
            let version = table.version().unwrap_or(0) + 1;
            let sequenced = with_sequences(
                &table.snapshot()?.snapshot().arrow_schema(),
                batches.clone(),
                version,
            )?;
            let properties = parquet_properties(sequenced[0].schema_ref());
            match table
                .clone()
                .write(sequenced)
                .with_save_mode(SaveMode::Append)
                .with_writer_properties(properties)
                .with_commit_properties(self.commit_properties(tag))
                .await
            {
                Ok(written) => break written,
                Err(e) => {
                    if !self.lost_the_race(table, version, attempt).await? {
                        return Err(e.into());
                    }
                    attempt += 1;
                }
            }
        };
        let version = written.version().unwrap_or(0);
        sync_commit(self.local_dir(id), version).await?;
        let files = written
            .snapshot()
            .map(|s| s.log_data().num_files())
            .unwrap_or(0);
        *table = written;
        Ok((Commit { version, rows }, files))
    }

    /// Deletes the rows of table `id` matching `predicate` (over the table's columns, unqualified)
    /// as one durable commit that rewrites the files holding them. Before deleting, the distinct
    /// values of `key_columns` (if any) among those rows are read; `then` gets them with the
    /// commit, under the table's writer lock. Returns the commit (its `rows` are the rows deleted).
    /// A `tag` is recorded in the commit (see [`OfflineStore::has_tagged_commit`]).
    pub async fn delete_then<F, Fut, E>(
        &self,
        id: TableId,
        predicate: datafusion::prelude::Expr,
        key_columns: &[String],
        tag: Option<&str>,
        then: F,
    ) -> Result<Commit, E>
    where
        F: FnOnce(Commit, Vec<RecordBatch>) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: From<StorageError>,
    {
        let handle = self.table(id).await?;
        let mut table = handle.writer.lock().await;
        let deleted = self
            .commit_delete(&mut table, id, predicate, key_columns, tag)
            .await?;
        handle.publish(&table);
        match deleted {
            Some((commit, keys)) => {
                then(commit, keys).await?;
                Ok(commit)
            }
            None => Ok(Commit {
                version: table.version().unwrap_or(0),
                rows: 0,
            }),
        }
    }

    /// Deletes from `table` (whose writer lock the caller holds) as one durable commit; returns
    /// it and the deleted keys, or `None` (and no commit) when no row has a key to delete.
    async fn commit_delete(
        &self,
        table: &mut DeltaTable,
        id: TableId,
        predicate: datafusion::prelude::Expr,
        key_columns: &[String],
        tag: Option<&str>,
    ) -> StorageResult<Option<(Commit, Vec<RecordBatch>)>> {
        self.catch_up(table).await?;
        let mut attempt = 0;
        loop {
            let version = table.version().unwrap_or(0) + 1;
            match self
                .delete_once(table, predicate.clone(), key_columns, tag)
                .await
            {
                Ok(None) => return Ok(None),
                Ok(Some((deleted, rows, keys))) => {
                    let version = deleted.version().unwrap_or(0);
                    sync_commit(self.local_dir(id), version).await?;
                    *table = deleted;
                    return Ok(Some((Commit { version, rows }, keys)));
                }
                Err(e) => {
                    if !self.lost_the_race(table, version, attempt).await? {
                        return Err(e);
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// One attempt of [`OfflineStore::delete_then`]: the table after the delete, the rows
    /// deleted and the distinct keys they had; `None` if no row has a key to delete.
    async fn delete_once(
        &self,
        table: &DeltaTable,
        predicate: datafusion::prelude::Expr,
        key_columns: &[String],
        tag: Option<&str>,
    ) -> StorageResult<Option<(DeltaTable, u64, Vec<RecordBatch>)>> {
        let mut keys = Vec::new();
        if !key_columns.is_empty() {
            let context = datafusion::prelude::SessionContext::new();
            table.update_datafusion_session(&context.state())?;
            let provider = table.table_provider().await?;
            keys = context
                .read_table(provider)?
                .filter(predicate.clone())?
                .select_columns(&key_columns.iter().map(String::as_str).collect::<Vec<_>>())?
                .distinct()?
                .collect()
                .await?;
        }
        if !key_columns.is_empty() && keys.iter().all(|b| b.num_rows() == 0) {
            return Ok(None);
        }
        let (deleted, metrics) = table
            .clone()
            .delete()
            .with_predicate(predicate)
            .with_commit_properties(self.commit_properties(tag))
            .await?;
        let rows = metrics.num_deleted_rows.unwrap_or(0) as u64;
        Ok(Some((deleted, rows, keys)))
    }

    /// The current version of table `id`.
    pub async fn version(&self, id: TableId) -> StorageResult<u64> {
        Ok(self.latest(id).await?.version().unwrap_or(0))
    }

    /// The operations (Delta's names: WRITE, DELETE, OPTIMIZE, ...) of the commits of table `id`
    /// after version `after`, oldest first.
    pub async fn operations_after(&self, id: TableId, after: u64) -> StorageResult<Vec<String>> {
        self.operations_between(id, after, None).await
    }

    /// The operations of the commits of table `id` after version `after` up to version
    /// `through` (the newest when `None`), oldest first.
    pub async fn operations_between(
        &self,
        id: TableId,
        after: u64,
        through: Option<u64>,
    ) -> StorageResult<Vec<String>> {
        let infos = self.commit_infos(id, after, through).await?;
        Ok(infos
            .iter()
            .map(|info| {
                info.get("operation")
                    .and_then(|o| o.as_str())
                    .unwrap_or_default()
                    .to_string()
            })
            .collect())
    }

    /// Whether a commit of table `id` after version `after` carries `tag` (given to
    /// [`OfflineStore::append_then`] or [`OfflineStore::delete_then`]): how the recovery of a
    /// transaction block tells the tables it already wrote from those it did not.
    pub async fn has_tagged_commit(
        &self,
        id: TableId,
        after: u64,
        tag: &str,
    ) -> StorageResult<bool> {
        let infos = self.commit_infos(id, after, None).await?;
        Ok(infos
            .iter()
            .any(|info| info.get(TRANSACTION_TAG).and_then(|t| t.as_str()) == Some(tag)))
    }

    /// The `commitInfo` of each commit of table `id` after version `after` up to `through` (the
    /// newest when `None`), oldest first; an empty object for a commit without one.
    async fn commit_infos(
        &self,
        id: TableId,
        after: u64,
        through: Option<u64>,
    ) -> StorageResult<Vec<serde_json::Value>> {
        let table = self.latest(id).await?;
        let latest = table.version().unwrap_or(0);
        let last = through.map_or(latest, |through| through.min(latest));
        let log = table.log_store();
        let mut infos = Vec::new();
        for version in after + 1..=last {
            let Some(entry) = log.read_commit_entry(version).await? else {
                continue;
            };
            let info = String::from_utf8_lossy(&entry)
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find_map(|mut action| action.get_mut("commitInfo").map(serde_json::Value::take))
                .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
            infos.push(info);
        }
        Ok(infos)
    }

    /// Adds a nullable column at the end of table `id`'s schema; rows written before read it as
    /// NULL. Adding a column the table already has with the same type does nothing, so a retry
    /// after a crash between this and the catalog change succeeds.
    pub async fn add_column(&self, id: TableId, field: Field) -> StorageResult<()> {
        let handle = self.table(id).await?;
        let mut table = handle.writer.lock().await;
        self.catch_up(&mut table).await?;
        let column =
            StructField::try_from_arrow(&field).map_err(|e| StorageError::Schema(e.to_string()))?;
        if let Some(existing) = table.snapshot()?.schema().field(field.name()) {
            if existing.data_type() == column.data_type() {
                return Ok(());
            }
            return Err(StorageError::Schema(format!(
                "column \"{}\" exists with another type",
                field.name()
            )));
        }
        let altered = table.clone().add_columns().with_fields([column]).await?;
        sync_commit(self.local_dir(id), altered.version().unwrap_or(0)).await?;
        *table = altered;
        handle.publish(&table);
        Ok(())
    }

    /// A DataFusion provider over table `id`'s current version, with the table's object store
    /// registered in `session` so the provider's scans can run there.
    /// With `version`, the provider reads that version of the table (time travel: nothing is
    /// vacuumed, so every version stays readable).
    pub async fn table_provider(
        &self,
        id: TableId,
        version: Option<u64>,
        session: &dyn datafusion::catalog::Session,
    ) -> StorageResult<Arc<dyn TableProvider>> {
        let mut table = self.latest(id).await?;
        if let Some(version) = version
            && table.version() != Some(version)
        {
            table.load_version(version).await?;
        }
        table.update_datafusion_session(session)?;
        Ok(table.table_provider().await?)
    }

    /// The number of live data files of table `id`.
    pub async fn file_count(&self, id: TableId) -> StorageResult<usize> {
        let table = self.latest(id).await?;
        Ok(table.snapshot()?.log_data().num_files())
    }

    /// The number of rows in the current version of table `id`, from the files' statistics.
    pub async fn row_count(&self, id: TableId) -> StorageResult<u64> {
        Ok(self
            .file_stats(id)
            .await?
            .iter()
            .map(|(rows, _)| rows)
            .sum())
    }

    /// The bytes of the live data files of the current version of table `id`.
    pub async fn byte_size(&self, id: TableId) -> StorageResult<u64> {
        Ok(self
            .file_stats(id)
            .await?
            .iter()
            .map(|(_, bytes)| bytes)
            .sum())
    }

    /// Rows and bytes of each live data file of the current version of table `id`.
    async fn file_stats(&self, id: TableId) -> StorageResult<Vec<(u64, u64)>> {
        let table = self.latest(id).await?;
        let snapshot = table.snapshot()?;
        Ok(snapshot
            .log_data()
            .iter()
            .map(|file| {
                (
                    file.num_records().unwrap_or(0) as u64,
                    file.size().max(0) as u64,
                )
            })
            .collect())
    }

    /// Deletes table `id` and all its files.
    pub async fn drop_table(&self, id: TableId) -> StorageResult<()> {
        self.lock_table_map().remove(&id);
        match &self.location {
            StoreLocation::Local(root) => {
                let dir = root.join(id.to_string());
                match tokio::fs::remove_dir_all(&dir).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(StorageError::io(&dir, e)),
                }
            }
            StoreLocation::Remote { store, prefix, .. } => {
                let table_prefix = child(prefix, &id.to_string());
                let objects = store
                    .list(Some(&table_prefix))
                    .map_ok(|meta| meta.location)
                    .boxed();
                store.delete_stream(objects).try_collect::<Vec<_>>().await?;
                Ok(())
            }
        }
    }

    /// The ids of the tables in the store, from its top-level directories.
    async fn stored_table_ids(&self) -> StorageResult<Vec<TableId>> {
        let names: Vec<String> = match &self.location {
            StoreLocation::Local(root) => {
                let mut names = Vec::new();
                let mut entries = tokio::fs::read_dir(root)
                    .await
                    .map_err(|e| StorageError::io(root, e))?;
                while let Some(entry) = entries
                    .next_entry()
                    .await
                    .map_err(|e| StorageError::io(root, e))?
                {
                    names.extend(entry.file_name().to_str().map(str::to_owned));
                }
                names
            }
            StoreLocation::Remote { store, prefix, .. } => store
                .list_with_delimiter(Some(prefix))
                .await?
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_owned))
                .collect(),
        };
        Ok(names.iter().filter_map(|n| n.parse().ok()).collect())
    }

    /// Deletes every table directory whose id `keep` rejects: tables created by a statement that
    /// crashed before the catalog recorded them, or dropped by one that crashed before deleting.
    pub async fn remove_orphans(
        &self,
        keep: impl Fn(TableId) -> bool,
    ) -> StorageResult<Vec<TableId>> {
        let mut removed = Vec::new();
        for id in self.stored_table_ids().await? {
            if !keep(id) {
                self.drop_table(id).await?;
                removed.push(id);
            }
        }
        Ok(removed)
    }
}

/// How the data files of a table with this (Arrow) schema are written: chosen for scan speed,
/// measured with `bench/ingest`.
///
/// - Numeric leaf columns (integers, timestamps, dates, floats, embeddings' elements) get no block
///   compression. Feature floats are close to random bytes, so a codec saves little and LZ4
///   decoding took over a quarter of a scan-aggregate's CPU.
/// - Integer columns (keys, counts, timestamps) are DELTA_BINARY_PACKED, which stores sorted or
///   clustered values (ids, event times) in a few bits each and decodes faster than LZ4.
/// - Every column is dictionary-encoded first while its dictionary stays small, which catches
///   repeated values (categories, flags, low-cardinality floats) whatever the type.
/// - Other columns (text, bytea) use LZ4_RAW rather than the ecosystem's default Snappy: it decodes
///   several times faster.
///
/// Spark 3.4+, DuckDB, pyarrow and polars read all of these.
fn parquet_properties(schema: &Schema) -> WriterProperties {
    let mut builder = WriterProperties::builder().set_compression(Compression::LZ4_RAW);
    // A schema Parquet cannot represent fails the write itself, with a better error.
    if let Ok(parquet_schema) = ArrowSchemaConverter::new().convert(schema) {
        for column in parquet_schema.columns() {
            let path = column.path().clone();
            match column.physical_type() {
                PhysicalType::FLOAT | PhysicalType::DOUBLE => {
                    builder = builder.set_column_compression(path, Compression::UNCOMPRESSED);
                }
                PhysicalType::INT32 | PhysicalType::INT64 => {
                    builder = builder
                        .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
                        .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
                }
                _ => {}
            }
        }
    }
    builder.build()
}

/// Merges the small files of a table into larger ones, as one commit; readers of older versions
/// keep their files (nothing is vacuumed), so time travel still works.
async fn compact(handle: Arc<OpenTable>, dir: Option<PathBuf>) {
    let mut table = handle.writer.lock().await;
    let properties = match table.snapshot() {
        Ok(snapshot) => parquet_properties(&snapshot.snapshot().arrow_schema()),
        Err(e) => {
            tracing::warn!(?dir, error = %e, "compaction skipped: no snapshot");
            return;
        }
    };
    let result = table
        .clone()
        .optimize()
        .with_writer_properties(properties)
        .with_target_size(
            std::num::NonZeroU64::new(COMPACTION_TARGET_BYTES).unwrap_or(std::num::NonZeroU64::MIN),
        )
        .await;
    match result {
        Ok((compacted, metrics)) => {
            let version = compacted.version().unwrap_or(0);
            if let Err(e) = sync_commit(dir.clone(), version).await {
                tracing::warn!(?dir, error = %e, "compaction commit could not be synced");
                return;
            }
            tracing::debug!(
                ?dir,
                files_removed = metrics.num_files_removed,
                files_added = metrics.num_files_added,
                "compacted"
            );
            *table = compacted;
            handle.publish(&table);
        }
        Err(e) => tracing::warn!(?dir, error = %e, "compaction failed"),
    }
}

/// Fsyncs what commit `version` of the table in local directory `dir` wrote: the data files its
/// log entry adds, the log entry itself, and the directories holding them. Nothing to do on an
/// object store (`dir` is `None`), where an acknowledged PUT is durable.
async fn sync_commit(dir: Option<PathBuf>, version: u64) -> StorageResult<()> {
    let Some(dir) = dir else {
        return Ok(());
    };
    crate::blocking(move || sync_commit_blocking(&dir, version)).await
}

fn sync_commit_blocking(dir: &Path, version: u64) -> StorageResult<()> {
    let log_dir = dir.join("_delta_log");
    let entry = log_dir.join(format!("{version:020}.json"));
    let text = std::fs::read_to_string(&entry).map_err(|e| StorageError::io(&entry, e))?;
    let mut dirs = std::collections::BTreeSet::new();
    for line in text.lines() {
        let action: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| StorageError::Internal(format!("{}: {e}", entry.display())))?;
        if let Some(path) = action.pointer("/add/path").and_then(|p| p.as_str()) {
            let decoded = percent_decode(path);
            let file = dir.join(&decoded);
            crate::sync_path(&file)?;
            if let Some(parent) = file.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
    }
    crate::sync_path(&entry)?;
    dirs.insert(log_dir);
    dirs.insert(dir.to_path_buf());
    for d in dirs {
        crate::sync_path(&d)?;
    }
    Ok(())
}

/// Delta log paths are percent-encoded URIs relative to the table root.
fn percent_decode(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

/// `prefix/name`, where `name` may hold several `/`-separated parts.
fn child(prefix: &ObjectPath, name: &str) -> ObjectPath {
    name.split('/')
        .fold(prefix.clone(), |path, part| path.join(part))
}

/// The batches with [`SEQUENCE_COLUMN`] inserted where `table_schema` has it (commit `version`);
/// unchanged when the table has no such column.
fn with_sequences(
    table_schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    version: u64,
) -> StorageResult<Vec<RecordBatch>> {
    let Ok(position) = table_schema.index_of(SEQUENCE_COLUMN) else {
        return Ok(batches);
    };
    let base = (version as i64) << 32;
    let mut next = 0i64;
    batches
        .into_iter()
        .map(|batch| {
            let rows = batch.num_rows() as i64;
            let sequences: ArrayRef = Arc::new(Int64Array::from_iter_values(
                (next..next + rows).map(|i| base | i),
            ));
            next += rows;
            let mut columns = batch.columns().to_vec();
            columns.insert(position, sequences);
            // The batch's own field types (the writer reconciles them with the table's), plus ours.
            let mut fields = batch.schema().fields().to_vec();
            fields.insert(position, table_schema.fields()[position].clone());
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                .map_err(|e| StorageError::Schema(e.to_string()))
        })
        .collect()
}

//! The online store: the latest row per primary key of every online feature-group version, in
//! RocksDB, for point lookups at serving time.
//!
//! Layout: one column family per table (`t<id>`), so enabling and disabling a table's online
//! data are a create and a drop; a `meta` column family records, per table, the offline commit
//! version applied last (`v<id>`) and the number of keys (`n<id>`), written in the same atomic,
//! synced write batch as the rows.
//!
//! Key: the primary key in Arrow's row format, which sorts like the key's values.
//! Value: a fixed header (format, event time, sequence, write time, column count) followed by the
//! whole row, encoded as `online_value.rs` describes (format 2; rows stored in format 1, Arrow's
//! row format, are still read). The column count lets rows written before an ADD COLUMN decode
//! (the added columns read as NULL).
//!
//! Which row wins: the one with the greater (event time, sequence), where the sequence is the row's
//! position in the offline history (`commit version << 32 | row number in the commit`). That order
//! is total and independent of the order rows are applied in, so applying a commit twice, or
//! commits out of order, gives the same store: recovery can replay from the offline store freely.
//!
//! Every RocksDB call runs on tokio's blocking pool: the public methods are async and never block
//! the runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayData, ArrayRef, AsArray, RecordBatch, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMicrosecondType};
use datafusion::arrow::row::{RowConverter, SortField};
use rocksdb::{
    BlockBasedOptions, BlockBasedTablePinningTier, Cache, ColumnFamilyDescriptor, DB,
    DataBlockIndexType, IteratorMode, Options, WriteBatch, WriteOptions,
};

use crate::blocking;
use crate::error::{StorageError, StorageResult};
use crate::offline::TableId;
use crate::online_value::{self, Codec, StoredValue};

const META_FAMILY: &str = "meta";
/// The format values are written in.
const VALUE_FORMAT: u8 = 2;
/// Rows in Arrow's row format, written before format 2; read, never written.
const ARROW_ROWS_FORMAT: u8 = 1;
/// format (1) + event time (8) + sequence (8) + written at (8) + column count (2).
const HEADER_LEN: usize = 27;
/// Rows per batch a scan yields.
const SCAN_BATCH_ROWS: usize = 8192;

/// What the online store needs to know about a table's rows: their schema, which columns are the
/// primary key, and which is the event time.
#[derive(Debug, Clone)]
pub struct OnlineLayout {
    schema: SchemaRef,
    /// Shared, as the layout is cloned into every key lookup's rows.
    key_columns: Arc<[usize]>,
    event_time_column: Option<usize>,
    /// The encoder of keys, made once: making it for every lookup cost a serving lookup about
    /// a twentieth of its time.
    key_converter: Arc<RowConverter>,
    /// How each column's values are encoded.
    codecs: Arc<[Codec]>,
}

impl OnlineLayout {
    pub fn new(
        schema: SchemaRef,
        key_columns: Vec<usize>,
        event_time_column: Option<usize>,
    ) -> StorageResult<OnlineLayout> {
        let sort_fields = |fields: &mut dyn Iterator<Item = &DataType>| {
            RowConverter::new(fields.map(|t| SortField::new(t.clone())).collect()).map_err(arrow)
        };
        let key_converter =
            sort_fields(&mut key_columns.iter().map(|&i| schema.field(i).data_type()))?;
        let codecs = schema
            .fields()
            .iter()
            .map(|f| Codec::of(f.data_type()))
            .collect::<StorageResult<_>>()?;
        Ok(OnlineLayout {
            schema,
            key_columns: key_columns.into(),
            event_time_column,
            key_converter: Arc::new(key_converter),
            codecs,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The primary-key columns, as indices into the schema, in key order.
    pub fn key_columns(&self) -> &[usize] {
        &self.key_columns
    }

    pub fn event_time_column(&self) -> Option<usize> {
        self.event_time_column
    }

    /// The decoder of format-1 values (Arrow's row format) that hold the first `columns` columns:
    /// rows written before an ADD COLUMN hold fewer.
    fn arrow_rows_converter(&self, columns: usize) -> StorageResult<RowConverter> {
        RowConverter::new(
            self.schema
                .fields()
                .iter()
                .take(columns)
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(arrow)
    }
}

/// The online store of one node.
pub struct OnlineStore {
    db: Arc<DB>,
    path: PathBuf,
    /// Options of every table's column family; they share one block cache.
    family_options: Options,
    /// Whether writes that record an applied version are synced. A single node's online store
    /// must be durable when a write is acknowledged; a cluster member's is rebuilt from the
    /// data group's log, which is, so it syncs only when its state machine says ([`OnlineStore::sync`]).
    synced_writes: bool,
    /// The row cache, if there is one (kept for its usage figure).
    row_cache: Option<Cache>,
}

impl std::fmt::Debug for OnlineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineStore")
            .field("path", &self.path)
            .finish()
    }
}

/// The header of a stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    format: u8,
    /// Microseconds since the epoch; `i64::MIN` when the table has no event time.
    event_time: i64,
    sequence: i64,
    /// When the row was applied, microseconds since the epoch: the row's age for ttl when the
    /// table has no event time.
    written_at: i64,
    columns: u16,
}

impl Header {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.format);
        out.extend_from_slice(&self.event_time.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.written_at.to_be_bytes());
        out.extend_from_slice(&self.columns.to_be_bytes());
    }

    fn decode(value: &[u8]) -> StorageResult<Header> {
        if value.len() < HEADER_LEN || ![VALUE_FORMAT, ARROW_ROWS_FORMAT].contains(&value[0]) {
            return Err(StorageError::Internal(
                "online store: unknown value format".into(),
            ));
        }
        let i64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&value[at..at + 8]);
            i64::from_be_bytes(bytes)
        };
        Ok(Header {
            format: value[0],
            event_time: i64_at(1),
            sequence: i64_at(9),
            written_at: i64_at(17),
            columns: u16::from_be_bytes([value[25], value[26]]),
        })
    }

    /// The age the ttl is measured on.
    fn age_time(&self) -> i64 {
        if self.event_time == i64::MIN {
            self.written_at
        } else {
            self.event_time
        }
    }

    fn wins_over(&self, other: &Header) -> bool {
        (self.event_time, self.sequence) > (other.event_time, other.sequence)
    }
}

fn family_name(id: TableId) -> String {
    format!("t{id}")
}

fn applied_key(id: TableId) -> String {
    format!("v{id}")
}

fn count_key(id: TableId) -> String {
    format!("n{id}")
}

fn rocks(e: rocksdb::Error) -> StorageError {
    StorageError::Internal(format!("online store: {e}"))
}

fn arrow(e: datafusion::arrow::error::ArrowError) -> StorageError {
    StorageError::Internal(format!("online store: {e}"))
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn read_i64(value: Option<&[u8]>) -> i64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(i64::from_be_bytes)
        .unwrap_or(0)
}

impl OnlineStore {
    /// Opens (or creates) the store in directory `path` with a block cache of `cache_bytes`
    /// shared by all tables, and no row cache.
    pub async fn open(path: &Path, cache_bytes: usize) -> StorageResult<OnlineStore> {
        OnlineStore::open_with_row_cache(path, cache_bytes, 0).await
    }

    /// [`OnlineStore::open`], with a row cache of `row_cache_bytes` (none if 0) besides the block
    /// cache. A key lookup whose row is in the row cache skips the search of the file's index
    /// and data block (docs/performance.md, point 9: 12% more lookups per second).
    pub async fn open_with_row_cache(
        path: &Path,
        cache_bytes: usize,
        row_cache_bytes: usize,
    ) -> StorageResult<OnlineStore> {
        let path = path.to_path_buf();
        let db_path = path.clone();
        // HyperClockCache: lookups take no lock, where LRU's take a shard mutex and relink a list.
        let cache = Cache::new_hyper_clock_cache(cache_bytes, 0);
        let family_options = family_options(&cache);
        let options_for_open = family_options.clone();
        // LRU: a HyperClockCache takes only fixed-size keys and silently refuses rows.
        let row_cache = (row_cache_bytes > 0).then(|| Cache::new_lru_cache(row_cache_bytes));
        let row_cache_for_open = row_cache.clone();
        let db = blocking(move || {
            let mut options = Options::default();
            options.create_if_missing(true);
            options.create_missing_column_families(true);
            let parallelism = std::thread::available_parallelism()
                .map(|n| n.get() as i32)
                .unwrap_or(2);
            options.increase_parallelism(parallelism);
            if let Some(row_cache) = &row_cache_for_open {
                options.set_row_cache(row_cache);
            }
            // A new directory has no families to list yet.
            let mut families = DB::list_cf(&options, &db_path).unwrap_or_default();
            if !families.iter().any(|n| n == META_FAMILY) {
                families.push(META_FAMILY.to_owned());
            }
            let descriptors = families
                .into_iter()
                .map(|name| ColumnFamilyDescriptor::new(name, options_for_open.clone()));
            DB::open_cf_descriptors(&options, &db_path, descriptors).map_err(rocks)
        })
        .await?;
        Ok(OnlineStore {
            db: Arc::new(db),
            path,
            family_options,
            synced_writes: true,
            row_cache,
        })
    }

    /// Bytes the row cache holds (0 without one).
    pub fn row_cache_usage(&self) -> usize {
        self.row_cache.as_ref().map_or(0, Cache::get_usage)
    }

    /// Makes writes unsynced (a cluster member's store, whose state machine calls
    /// [`OnlineStore::sync`] before it records what it applied).
    pub fn without_synced_writes(mut self) -> OnlineStore {
        self.synced_writes = false;
        self
    }

    /// Makes every write so far durable.
    pub async fn sync(&self) -> StorageResult<()> {
        let db = self.db.clone();
        blocking(move || db.flush_wal(true).map_err(rocks)).await
    }

    /// Options of a write that records an applied version.
    fn recording(&self) -> WriteOptions {
        let mut options = WriteOptions::default();
        options.set_sync(self.synced_writes);
        options
    }

    /// The tables the store has.
    pub async fn tables(&self) -> StorageResult<Vec<TableId>> {
        let path = self.path.clone();
        // Listing reads the database's manifest: file IO, so off the runtime.
        let names =
            blocking(move || DB::list_cf(&Options::default(), &path).map_err(rocks)).await?;
        Ok(names
            .iter()
            .filter_map(|n| n.strip_prefix('t').and_then(|id| id.parse().ok()))
            .filter(|id| self.has_table(*id))
            .collect())
    }

    /// Whether table `id` is in the store.
    pub fn has_table(&self, id: TableId) -> bool {
        self.db.cf_handle(&family_name(id)).is_some()
    }

    /// Creates table `id`, empty, with nothing applied yet. Creating an existing table empties it.
    pub async fn create_table(&self, id: TableId) -> StorageResult<()> {
        self.drop_table(id).await?;
        let db = self.db.clone();
        let options = self.family_options.clone();
        blocking(move || db.create_cf(family_name(id), &options).map_err(rocks)).await
    }

    /// Drops table `id` and its bookkeeping; dropping a missing table does nothing.
    pub async fn drop_table(&self, id: TableId) -> StorageResult<()> {
        let db = self.db.clone();
        let options = self.recording();
        blocking(move || {
            let meta = meta_family(&db)?;
            let mut batch = WriteBatch::default();
            batch.delete_cf(&meta, applied_key(id));
            batch.delete_cf(&meta, count_key(id));
            db.write_opt(batch, &options).map_err(rocks)?;
            if db.cf_handle(&family_name(id)).is_some() {
                db.drop_cf(&family_name(id)).map_err(rocks)?;
            }
            Ok(())
        })
        .await
    }

    /// The offline commit version applied last to table `id`, if any.
    pub async fn applied_version(&self, id: TableId) -> StorageResult<Option<u64>> {
        let db = self.db.clone();
        blocking(move || {
            let meta = meta_family(&db)?;
            Ok(db
                .get_pinned_cf(&meta, applied_key(id))
                .map_err(rocks)?
                .map(|v| read_i64(Some(&v)) as u64))
        })
        .await
    }

    /// The number of keys of table `id`.
    pub async fn row_count(&self, id: TableId) -> StorageResult<u64> {
        let db = self.db.clone();
        blocking(move || {
            let meta = meta_family(&db)?;
            let count = db.get_pinned_cf(&meta, count_key(id)).map_err(rocks)?;
            Ok(read_i64(count.as_deref()).max(0) as u64)
        })
        .await
    }

    /// The bytes table `id` takes: its SST files and its rows still in memory tables (not yet
    /// flushed). 0 for a table the store does not have.
    pub async fn byte_size(&self, id: TableId) -> StorageResult<u64> {
        if !self.has_table(id) {
            return Ok(0);
        }
        let db = self.db.clone();
        blocking(move || {
            let family = table_family(&db, id)?;
            let mut bytes = 0;
            for property in [
                rocksdb::properties::TOTAL_SST_FILES_SIZE,
                rocksdb::properties::CUR_SIZE_ALL_MEM_TABLES,
            ] {
                bytes += db
                    .property_int_value_cf(&family, property)
                    .map_err(rocks)?
                    .unwrap_or(0);
            }
            Ok(bytes)
        })
        .await
    }

    /// Applies rows to table `id`: each row replaces the stored row of its key if its (event
    /// time, sequence) is greater; `sequences[i]` is row `i`'s sequence. With `applied`, the batch
    /// also records that offline commit as applied and is synced, which makes every earlier
    /// unsynced batch durable too (RocksDB's log is sequential); without it, it is not synced.
    pub async fn apply(
        &self,
        id: TableId,
        layout: &OnlineLayout,
        batch: RecordBatch,
        sequences: Vec<i64>,
        applied: Option<u64>,
    ) -> StorageResult<()> {
        let db = self.db.clone();
        let layout = layout.clone();
        let options = self.recording();
        blocking(move || apply_blocking(&db, id, &layout, &batch, &sequences, applied, &options))
            .await
    }

    /// Records that offline commit `version` is applied to table `id` without changing rows (a
    /// commit with nothing for the online store: compaction, a schema change).
    pub async fn set_applied_version(&self, id: TableId, version: u64) -> StorageResult<()> {
        let db = self.db.clone();
        let options = self.recording();
        blocking(move || {
            let meta = meta_family(&db)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(&meta, applied_key(id), (version as i64).to_be_bytes());
            db.write_opt(batch, &options).map_err(rocks)
        })
        .await
    }

    /// Removes the keys (key columns of `keys`, in the layout's key order) from table `id`, as
    /// part of offline commit `version`.
    pub async fn delete(
        &self,
        id: TableId,
        layout: &OnlineLayout,
        keys: Vec<ArrayRef>,
        version: u64,
    ) -> StorageResult<u64> {
        let db = self.db.clone();
        let layout = layout.clone();
        let options = self.recording();
        blocking(move || {
            let family = table_family(&db, id)?;
            let meta = meta_family(&db)?;
            let encoded = layout.key_converter.convert_columns(&keys).map_err(arrow)?;
            let mut unique: Vec<&[u8]> = encoded.iter().map(|r| r.data()).collect();
            unique.sort_unstable();
            unique.dedup();
            let existing = db.batched_multi_get_cf(&family, unique.iter().copied(), true);
            let mut batch = WriteBatch::default();
            let mut removed = 0u64;
            for (key, found) in unique.iter().zip(existing) {
                if found.map_err(rocks)?.is_some() {
                    batch.delete_cf(&family, key);
                    removed += 1;
                }
            }
            let count = read_i64(
                db.get_pinned_cf(&meta, count_key(id))
                    .map_err(rocks)?
                    .as_deref(),
            );
            batch.put_cf(&meta, count_key(id), (count - removed as i64).to_be_bytes());
            batch.put_cf(&meta, applied_key(id), (version as i64).to_be_bytes());
            db.write_opt(batch, &options).map_err(rocks)?;
            Ok(removed)
        })
        .await
    }

    /// The stored rows of the given keys (key columns in the layout's key order), each key once,
    /// in the order of first request; keys without a row, or whose row is older than `min_age`
    /// (microseconds since the epoch), are left out.
    pub async fn get(
        &self,
        id: TableId,
        layout: &OnlineLayout,
        keys: Vec<ArrayRef>,
        min_age: Option<i64>,
    ) -> StorageResult<RecordBatch> {
        self.get_stored(id, layout, keys, min_age)
            .await?
            .into_batch()
    }

    /// The rows [`OnlineStore::get`] finds, as stored, for a caller that reads them value by
    /// value.
    pub async fn get_stored(
        &self,
        id: TableId,
        layout: &OnlineLayout,
        keys: Vec<ArrayRef>,
        min_age: Option<i64>,
    ) -> StorageResult<StoredRows> {
        let encoded = layout.key_converter.convert_columns(&keys).map_err(arrow)?;
        let unique: Vec<Vec<u8>> = match encoded.num_rows() {
            1 => vec![encoded.row(0).data().to_vec()],
            _ => {
                let mut seen = std::collections::HashSet::new();
                encoded
                    .iter()
                    .map(|r| r.data())
                    .filter(|k| seen.insert(*k))
                    .map(<[u8]>::to_vec)
                    .collect()
            }
        };
        // First from memory only: a read that would need the disk answers Incomplete instead
        // of blocking, and then the whole lookup goes to the blocking pool.
        if let Some(rows) = self.get_in_memory(id, layout, &unique, min_age)? {
            return Ok(rows);
        }
        let db = self.db.clone();
        let layout = layout.clone();
        blocking(move || {
            let family = table_family(&db, id)?;
            let mut rows = StoredRows::new(layout, unique.len());
            for found in db.batched_multi_get_cf(&family, unique.iter(), false) {
                if let Some(value) = found.map_err(rocks)? {
                    rows.push(&value, min_age)?;
                }
            }
            Ok(rows)
        })
        .await
    }

    /// The rows of `keys` if every one of them is in memory (memtables or block cache), without
    /// any I/O; `None` if one would need a read from disk.
    fn get_in_memory(
        &self,
        id: TableId,
        layout: &OnlineLayout,
        keys: &[Vec<u8>],
        min_age: Option<i64>,
    ) -> StorageResult<Option<StoredRows>> {
        let family = table_family(&self.db, id)?;
        let mut options = rocksdb::ReadOptions::default();
        options.set_read_tier(rocksdb::ReadTier::BlockCache);
        // Key by key: a Get from memory costs a microsecond or two, and Get is where RocksDB
        // keeps the promise of the block-cache tier.
        let mut rows = StoredRows::new(layout.clone(), keys.len());
        for key in keys {
            match self.db.get_pinned_cf_opt(&family, key, &options) {
                Ok(Some(value)) => rows.push(&value, min_age)?,
                Ok(None) => {}
                Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => return Ok(None),
                Err(e) => return Err(rocks(e)),
            }
        }
        Ok(Some(rows))
    }

    /// Every stored row of table `id` in key order, in batches, leaving out rows older than
    /// `min_age`.
    pub async fn scan(
        &self,
        id: TableId,
        layout: &OnlineLayout,
        min_age: Option<i64>,
    ) -> StorageResult<Vec<RecordBatch>> {
        let db = self.db.clone();
        let layout = layout.clone();
        blocking(move || {
            let family = table_family(&db, id)?;
            let mut batches = Vec::new();
            let mut values: Vec<Box<[u8]>> = Vec::with_capacity(SCAN_BATCH_ROWS);
            for item in db.iterator_cf(&family, IteratorMode::Start) {
                let (_, value) = item.map_err(rocks)?;
                values.push(value);
                if values.len() == SCAN_BATCH_ROWS {
                    batches.push(decode_rows(
                        &layout,
                        values.iter().map(|v| &v[..]),
                        min_age,
                    )?);
                    values.clear();
                }
            }
            if !values.is_empty() || batches.is_empty() {
                batches.push(decode_rows(
                    &layout,
                    values.iter().map(|v| &v[..]),
                    min_age,
                )?);
            }
            Ok(batches)
        })
        .await
    }
}

/// Rows a key lookup found, copied out of RocksDB as stored: decoded into Arrow arrays by
/// [`StoredRows::into_batch`], or read value by value by [`StoredRows::read_row`] (the server
/// answers a key lookup that way, without arrays in between: bench/online_lookup measured making
/// and encoding 50 one-value arrays as a fifth of a lookup's CPU).
#[derive(Debug)]
pub struct StoredRows {
    layout: OnlineLayout,
    /// The stored values (header included), one after the other.
    bytes: Vec<u8>,
    /// Where each value ends in `bytes`.
    ends: Vec<usize>,
    /// Whether every value is in the current format, which `read_row` reads.
    current_format: bool,
}

impl StoredRows {
    fn new(layout: OnlineLayout, capacity: usize) -> StoredRows {
        StoredRows {
            layout,
            bytes: Vec::new(),
            ends: Vec::with_capacity(capacity),
            current_format: true,
        }
    }

    /// Keeps a stored value unless its row is older than `min_age`.
    fn push(&mut self, value: &[u8], min_age: Option<i64>) -> StorageResult<()> {
        let header = Header::decode(value)?;
        if min_age.is_some_and(|min| header.age_time() < min) {
            return Ok(());
        }
        self.current_format &= header.format == VALUE_FORMAT;
        self.bytes.extend_from_slice(value);
        self.ends.push(self.bytes.len());
        Ok(())
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.layout.schema
    }

    pub fn num_rows(&self) -> usize {
        self.ends.len()
    }

    /// Whether [`StoredRows::read_row`] reads every row (rows written in format 1, before
    /// format 2, decode only into a batch).
    pub fn readable_by_value(&self) -> bool {
        self.current_format
    }

    fn value(&self, row: usize) -> &[u8] {
        let start = row.checked_sub(1).map_or(0, |before| self.ends[before]);
        &self.bytes[start..self.ends[row]]
    }

    /// The values of row `row` into `out`, one per column of the schema, `None` for NULL.
    pub fn read_row<'a>(
        &'a self,
        row: usize,
        out: &mut Vec<Option<StoredValue<'a>>>,
    ) -> StorageResult<()> {
        let value = self.value(row);
        let header = Header::decode(value)?;
        if header.format != VALUE_FORMAT {
            return Err(StorageError::Internal(
                "online store: a row in format 1 read value by value".into(),
            ));
        }
        let count = usize::from(header.columns);
        if count > self.layout.codecs.len() {
            return Err(StorageError::Schema(format!(
                "online row has {count} columns, the table {}",
                self.layout.codecs.len()
            )));
        }
        online_value::read_row(&self.layout.codecs, count, &value[HEADER_LEN..], out)
    }

    /// The rows decoded into a batch of the layout's schema.
    pub fn into_batch(self) -> StorageResult<RecordBatch> {
        decode_rows(
            &self.layout,
            (0..self.num_rows()).map(|row| self.value(row)),
            None,
        )
    }
}

fn meta_family(db: &DB) -> StorageResult<Arc<rocksdb::BoundColumnFamily<'_>>> {
    db.cf_handle(META_FAMILY)
        .ok_or_else(|| StorageError::Internal("online store: no meta family".into()))
}

fn table_family(db: &DB, id: TableId) -> StorageResult<Arc<rocksdb::BoundColumnFamily<'_>>> {
    db.cf_handle(&family_name(id))
        .ok_or(StorageError::MissingOnlineTable(id))
}

fn family_options(cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Lookups are by whole key: a bloom filter skips files that cannot hold it.
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    // Every lookup reads the index and filter of each file it may be in: pinned, they count
    // against the cache but are read without a cache lookup each time, and are never evicted by
    // data blocks. bench/online_lookup measured the block lookups as a tenth of a key lookup.
    table.set_unpartitioned_pinning_tier(BlockBasedTablePinningTier::All);
    // A hash table in each data block finds a key without a binary search over the block.
    table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
    let mut options = Options::default();
    options.set_block_based_table_factory(&table);
    options
}

/// The event times of `column` in microseconds since the epoch.
fn event_times(column: &ArrayRef) -> StorageResult<Vec<i64>> {
    let micros = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None)).map_err(arrow)?;
    let micros = micros.as_primitive::<TimestampMicrosecondType>();
    Ok((0..micros.len())
        .map(|i| {
            if micros.is_null(i) {
                i64::MIN
            } else {
                micros.value(i)
            }
        })
        .collect())
}

fn apply_blocking(
    db: &DB,
    id: TableId,
    layout: &OnlineLayout,
    batch: &RecordBatch,
    sequences: &[i64],
    applied: Option<u64>,
    recording: &WriteOptions,
) -> StorageResult<()> {
    let family = table_family(db, id)?;
    let meta = meta_family(db)?;
    let key_columns: Vec<ArrayRef> = layout
        .key_columns
        .iter()
        .map(|&i| batch.column(i).clone())
        .collect();
    let keys = layout
        .key_converter
        .convert_columns(&key_columns)
        .map_err(arrow)?;
    let times = match layout.event_time_column {
        Some(i) => event_times(batch.column(i))?,
        None => vec![i64::MIN; batch.num_rows()],
    };
    let written_at = now_micros();
    let columns = u16::try_from(batch.num_columns())
        .map_err(|_| StorageError::Schema("too many columns for the online store".into()))?;
    let header = |row: usize| Header {
        format: VALUE_FORMAT,
        event_time: times[row],
        sequence: sequences[row],
        written_at,
        columns,
    };
    // The winner per key within the batch.
    let mut winners: HashMap<&[u8], usize> = HashMap::new();
    for row in 0..batch.num_rows() {
        let key = keys.row(row).data();
        match winners.get(key) {
            Some(&current) if !header(row).wins_over(&header(current)) => {}
            _ => {
                winners.insert(key, row);
            }
        }
    }
    let mut candidates: Vec<(&[u8], usize)> = winners.into_iter().collect();
    candidates.sort_unstable();
    let stored = db.batched_multi_get_cf(&family, candidates.iter().map(|(k, _)| *k), true);
    let columns: Vec<ArrayData> = batch.columns().iter().map(|c| c.to_data()).collect();
    let mut write = WriteBatch::default();
    let mut added = 0i64;
    let mut value = Vec::new();
    for ((key, row), stored) in candidates.iter().zip(stored) {
        let incoming = header(*row);
        match stored.map_err(rocks)? {
            Some(old) if !incoming.wins_over(&Header::decode(&old)?) => continue,
            Some(_) => {}
            None => added += 1,
        }
        value.clear();
        incoming.encode(&mut value);
        online_value::encode_row(&layout.codecs, &columns, *row, &mut value)?;
        write.put_cf(&family, key, &value);
    }
    let count = read_i64(
        db.get_pinned_cf(&meta, count_key(id))
            .map_err(rocks)?
            .as_deref(),
    );
    write.put_cf(&meta, count_key(id), (count + added).to_be_bytes());
    match applied {
        Some(version) => {
            write.put_cf(&meta, applied_key(id), (version as i64).to_be_bytes());
            db.write_opt(write, recording).map_err(rocks)
        }
        None => db.write(write).map_err(rocks),
    }
}

/// Decodes stored values into a batch of the layout's schema, in their order, leaving out rows
/// older than `min_age`.
fn decode_rows<'a>(
    layout: &OnlineLayout,
    values: impl Iterator<Item = &'a [u8]>,
    min_age: Option<i64>,
) -> StorageResult<RecordBatch> {
    // Runs of consecutive values that decode together: format 2 values of any width (each
    // counts its own columns), format 1 values of one width.
    let mut runs: Vec<((u8, usize), Vec<(usize, &'a [u8])>)> = Vec::new();
    for value in values {
        let header = Header::decode(value)?;
        if min_age.is_some_and(|min| header.age_time() < min) {
            continue;
        }
        let width = usize::from(header.columns);
        if width > layout.schema.fields().len() {
            return Err(StorageError::Schema(format!(
                "online row has {width} columns, the table {}",
                layout.schema.fields().len()
            )));
        }
        let run = match header.format {
            VALUE_FORMAT => (VALUE_FORMAT, 0),
            format => (format, width),
        };
        let row = (width, &value[HEADER_LEN..]);
        match runs.last_mut() {
            Some((last, rows)) if *last == run => rows.push(row),
            _ => runs.push((run, vec![row])),
        }
    }
    let schema = layout.schema.clone();
    let mut batches = Vec::with_capacity(runs.len().max(1));
    for ((format, width), rows) in runs {
        let columns = if format == VALUE_FORMAT {
            online_value::decode_rows(&schema, &layout.codecs, &rows)?
        } else {
            let converter = layout.arrow_rows_converter(width)?;
            let parser = converter.parser();
            let mut columns = converter
                .convert_rows(rows.iter().map(|(_, r)| parser.parse(r)))
                .map_err(arrow)?;
            for field in schema.fields().iter().skip(width) {
                columns.push(new_null_array(field.data_type(), rows.len()));
            }
            columns
        };
        batches.push(RecordBatch::try_new(schema.clone(), columns).map_err(arrow)?);
    }
    match batches.len() {
        0 => Ok(RecordBatch::new_empty(schema)),
        1 => Ok(batches.remove(0)),
        _ => datafusion::arrow::compute::concat_batches(&schema, &batches).map_err(arrow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    fn layout() -> OnlineLayout {
        OnlineLayout::new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("score", DataType::Float64, true),
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Microsecond, None),
                    false,
                ),
            ])),
            vec![0],
            Some(2),
        )
        .unwrap()
    }

    fn rows(layout: &OnlineLayout, ids: &[i64], scores: &[f64], ts: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            layout.schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(Float64Array::from(scores.to_vec())),
                Arc::new(TimestampMicrosecondArray::from(ts.to_vec())),
            ],
        )
        .unwrap()
    }

    fn scores(batch: &RecordBatch) -> Vec<(i64, f64)> {
        let ids = batch
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let scores = batch
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        (0..batch.num_rows())
            .map(|i| (ids.value(i), scores.value(i)))
            .collect()
    }

    #[tokio::test]
    async fn latest_row_per_key_whatever_the_order_of_application() {
        let dir = tempfile::tempdir().unwrap();
        let store = OnlineStore::open(dir.path(), 8 << 20).await.unwrap();
        let layout = layout();
        store.create_table(1).await.unwrap();
        // Commit 1: key 1 at t=10; key 2 at t=10 twice in one statement (the later row wins).
        let first = rows(&layout, &[1, 2, 2], &[1.0, 2.0, 2.5], &[10, 10, 10]);
        // Commit 2: late data for key 1 (t=5) loses; key 2 at an equal time wins (later commit).
        let second = rows(&layout, &[1, 2], &[9.0, 3.0], &[5, 10]);
        let seq =
            |version: i64, n: usize| (0..n as i64).map(|i| version << 32 | i).collect::<Vec<_>>();
        store
            .apply(1, &layout, second.clone(), seq(2, 2), Some(2))
            .await
            .unwrap();
        store
            .apply(1, &layout, first.clone(), seq(1, 3), Some(1))
            .await
            .unwrap();
        // Applying a commit twice changes nothing.
        store
            .apply(1, &layout, second, seq(2, 2), Some(2))
            .await
            .unwrap();
        let keys: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![2, 1, 3, 2]))];
        let found = store.get(1, &layout, keys, None).await.unwrap();
        assert_eq!(scores(&found), vec![(2, 3.0), (1, 1.0)]);
        // The same rows read value by value.
        let keys: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![2, 1]))];
        let stored = store
            .get_stored(1, &layout, keys.clone(), None)
            .await
            .unwrap();
        assert!(stored.readable_by_value());
        let mut values = Vec::new();
        let read: Vec<(i64, f64)> = (0..stored.num_rows())
            .map(|row| {
                stored.read_row(row, &mut values).unwrap();
                let fixed = |v: Option<StoredValue>| match v {
                    Some(StoredValue::Fixed(bytes)) => <[u8; 8]>::try_from(bytes).unwrap(),
                    other => panic!("{other:?}"),
                };
                (
                    i64::from_le_bytes(fixed(values[0])),
                    f64::from_le_bytes(fixed(values[1])),
                )
            })
            .collect();
        assert_eq!(read, vec![(2, 3.0), (1, 1.0)]);
        assert_eq!(scores(&stored.into_batch().unwrap()), read);
        // ttl: both rows are at t=10, too old for a minimum of 11.
        let recent = store.get_stored(1, &layout, keys, Some(11)).await.unwrap();
        assert_eq!(recent.num_rows(), 0);
        assert_eq!(store.row_count(1).await.unwrap(), 2);
        assert_eq!(store.applied_version(1).await.unwrap(), Some(2));
        // ttl: rows with an event time before 10 are too old.
        let all = store.scan(1, &layout, Some(10)).await.unwrap();
        assert_eq!(scores(&all[0]), vec![(1, 1.0), (2, 3.0)]);
        let none = store.scan(1, &layout, Some(11)).await.unwrap();
        assert_eq!(none[0].num_rows(), 0);

        let removed = store
            .delete(1, &layout, vec![Arc::new(Int64Array::from(vec![1, 7]))], 3)
            .await
            .unwrap();
        assert_eq!(removed, 1);
        assert_eq!(store.row_count(1).await.unwrap(), 1);
        drop(store);

        // Reopened: the rows and the bookkeeping are there.
        let store = OnlineStore::open(dir.path(), 8 << 20).await.unwrap();
        assert_eq!(store.tables().await.unwrap(), vec![1]);
        assert_eq!(store.applied_version(1).await.unwrap(), Some(3));
        let all = store.scan(1, &layout, None).await.unwrap();
        assert_eq!(scores(&all[0]), vec![(2, 3.0)]);
        store.drop_table(1).await.unwrap();
        assert!(!store.has_table(1));
        assert_eq!(store.applied_version(1).await.unwrap(), None);
    }

    #[tokio::test]
    async fn reads_on_the_runtime_never_touch_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layout();
        let store = OnlineStore::open(dir.path(), 8 << 20).await.unwrap();
        store.create_table(5).await.unwrap();
        let batch = rows(&layout, &[1, 2, 3], &[1.0, 2.0, 3.0], &[10, 10, 10]);
        store
            .apply(
                5,
                &layout,
                batch,
                vec![1 << 32, 1 << 32 | 1, 1 << 32 | 2],
                Some(1),
            )
            .await
            .unwrap();
        store
            .db
            .flush_cf(&table_family(&store.db, 5).unwrap())
            .unwrap();
        drop(store);

        // Reopened: the rows are in a table file only, and the block cache is cold.
        let store = OnlineStore::open(dir.path(), 8 << 20).await.unwrap();
        let ids = |ids: Vec<i64>| -> Vec<ArrayRef> { vec![Arc::new(Int64Array::from(ids))] };
        let encoded = |keys: Vec<i64>| -> Vec<Vec<u8>> {
            let rows = layout.key_converter.convert_columns(&ids(keys)).unwrap();
            rows.iter().map(|r| r.data().to_vec()).collect()
        };
        for keys in [vec![2], vec![1, 3]] {
            let from_memory = store.get_in_memory(5, &layout, &encoded(keys), None);
            assert!(from_memory.unwrap().is_none(), "a cold read needs the disk");
        }
        // The lookup reads the block on the blocking pool, and it is in memory from then on.
        let found = store.get(5, &layout, ids(vec![2]), None).await.unwrap();
        assert_eq!(scores(&found), vec![(2, 2.0)]);
        let warm = store
            .get_in_memory(5, &layout, &encoded(vec![3, 1]), None)
            .unwrap()
            .expect("the block is cached");
        assert_eq!(
            scores(&warm.into_batch().unwrap()),
            vec![(3, 3.0), (1, 1.0)]
        );
    }

    /// The row cache holds rows per table file: a newer row (in the memtable, then in a new file
    /// after a flush and a compaction) and a delete are seen at once, never a cached older row.
    #[tokio::test]
    async fn the_row_cache_never_answers_with_an_older_row() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layout();
        let store = OnlineStore::open_with_row_cache(dir.path(), 8 << 20, 8 << 20)
            .await
            .unwrap();
        store.create_table(6).await.unwrap();
        let ids = |ids: Vec<i64>| -> Vec<ArrayRef> { vec![Arc::new(Int64Array::from(ids))] };
        let flush = |store: &OnlineStore| {
            let family = table_family(&store.db, 6).unwrap();
            store.db.flush_cf(&family).unwrap();
            store
                .db
                .compact_range_cf(&family, None::<&[u8]>, None::<&[u8]>);
        };
        let write = |version: i64, score: f64| {
            let batch = rows(&layout, &[1, 2], &[score, score], &[version, version]);
            (batch, vec![version << 32, version << 32 | 1])
        };
        let (batch, seqs) = write(1, 1.0);
        store.apply(6, &layout, batch, seqs, Some(1)).await.unwrap();
        flush(&store);
        // Read twice: the second read is answered from the row cache.
        assert_eq!(store.row_cache_usage(), 0);
        for _ in 0..2 {
            let found = store.get(6, &layout, ids(vec![1, 2]), None).await.unwrap();
            assert_eq!(scores(&found), vec![(1, 1.0), (2, 1.0)]);
        }
        assert!(
            store.row_cache_usage() > 0,
            "the rows read are in the row cache"
        );
        let (batch, seqs) = write(2, 2.0);
        store.apply(6, &layout, batch, seqs, Some(2)).await.unwrap();
        let found = store.get(6, &layout, ids(vec![1, 2]), None).await.unwrap();
        assert_eq!(
            scores(&found),
            vec![(1, 2.0), (2, 2.0)],
            "from the memtable"
        );
        flush(&store);
        for _ in 0..2 {
            let found = store.get(6, &layout, ids(vec![2, 1]), None).await.unwrap();
            assert_eq!(
                scores(&found),
                vec![(2, 2.0), (1, 2.0)],
                "after the compaction"
            );
        }
        store.delete(6, &layout, ids(vec![1]), 3).await.unwrap();
        let found = store.get(6, &layout, ids(vec![1, 2]), None).await.unwrap();
        assert_eq!(scores(&found), vec![(2, 2.0)], "the deleted key is gone");
    }

    /// Rows written by an older Quiver, in format 1 (Arrow's row format), read among rows of
    /// format 2, in the order asked for.
    #[tokio::test]
    async fn rows_stored_in_arrow_row_format_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = OnlineStore::open(dir.path(), 8 << 20).await.unwrap();
        let layout = layout();
        store.create_table(6).await.unwrap();
        let current = rows(&layout, &[1, 3], &[1.0, 3.0], &[10, 10]);
        store
            .apply(6, &layout, current, vec![1 << 32, 1 << 32 | 1], Some(1))
            .await
            .unwrap();
        let old = rows(&layout, &[2], &[2.0], &[10]);
        let converter = layout.arrow_rows_converter(3).unwrap();
        let encoded = converter.convert_columns(old.columns()).unwrap();
        let mut value = Vec::new();
        Header {
            format: ARROW_ROWS_FORMAT,
            event_time: 10,
            sequence: 0,
            written_at: 0,
            columns: 3,
        }
        .encode(&mut value);
        value.extend_from_slice(encoded.row(0).data());
        let key = layout
            .key_converter
            .convert_columns(&[old.column(0).clone()])
            .unwrap();
        let family = table_family(&store.db, 6).unwrap();
        store.db.put_cf(&family, key.row(0).data(), &value).unwrap();

        let keys: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![3, 2, 1]))];
        let stored = store
            .get_stored(6, &layout, keys.clone(), None)
            .await
            .unwrap();
        assert!(!stored.readable_by_value());
        assert!(stored.read_row(0, &mut Vec::new()).is_ok());
        assert!(stored.read_row(1, &mut Vec::new()).is_err());
        let found = store.get(6, &layout, keys, None).await.unwrap();
        assert_eq!(scores(&found), vec![(3, 3.0), (2, 2.0), (1, 1.0)]);
        let all = store.scan(6, &layout, None).await.unwrap();
        assert_eq!(scores(&all[0]), vec![(1, 1.0), (2, 2.0), (3, 3.0)]);
    }

    #[tokio::test]
    async fn rows_written_before_a_new_column_read_it_as_null() {
        let dir = tempfile::tempdir().unwrap();
        let store = OnlineStore::open(dir.path(), 8 << 20).await.unwrap();
        let narrow = layout();
        store.create_table(4).await.unwrap();
        let batch = rows(&narrow, &[1], &[1.5], &[10]);
        store
            .apply(4, &narrow, batch, vec![1 << 32], Some(1))
            .await
            .unwrap();
        let mut fields = narrow.schema.fields().to_vec();
        fields.push(Arc::new(Field::new("extra", DataType::Utf8, true)));
        let wide = OnlineLayout::new(
            Arc::new(Schema::new(fields)),
            narrow.key_columns.to_vec(),
            narrow.event_time_column,
        )
        .unwrap();
        let all = store.scan(4, &wide, None).await.unwrap();
        assert_eq!(all[0].num_columns(), 4);
        assert!(all[0].column(3).is_null(0));
        assert_eq!(scores(&all[0]), vec![(1, 1.5)]);
    }
}

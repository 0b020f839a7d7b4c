//! Training dataset files: written to a staging directory of the data dir, then published to the
//! dataset's location (`<location>/<split>/`) in one step at the end.
//!
//! Staging is what makes a failed or canceled write leave nothing behind: until `publish`, no file
//! is in the location, and the staging directory is removed whatever happens. Files are sharded by
//! rows (`part-00000.parquet`, ...) except npy and hdf5, which hold a split in one file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::artifact::object_path;
use datafusion::arrow::csv;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::FileWriter as IpcWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;
use flate2::write::GzEncoder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::block_file::BlockFile;
use crate::error::{StorageError, StorageResult};
use crate::hdf5_file::Hdf5Writer;
use crate::location::StoreLocation;
use crate::npy::NpyWriter;
use crate::parquet_file::ParallelParquetWriter;
use crate::tfrecord::TfRecordWriter;

/// The formats a training dataset is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Parquet,
    Csv,
    Arrow,
    Tfrecords { gzip: bool },
    Npy,
    Hdf5,
}

impl FileFormat {
    fn extension(self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Csv => "csv",
            FileFormat::Arrow => "arrow",
            FileFormat::Tfrecords { gzip: false } => "tfrecord",
            FileFormat::Tfrecords { gzip: true } => "tfrecord.gz",
            FileFormat::Npy => "npy",
            FileFormat::Hdf5 => "h5",
        }
    }

    /// Whether a split is sharded into files of so many rows; npy and hdf5 hold a split in one.
    fn is_sharded(self) -> bool {
        !matches!(self, FileFormat::Npy | FileFormat::Hdf5)
    }

    /// Checks that the format can hold these columns, before any row is computed.
    pub fn check_schema(self, schema: &SchemaRef) -> StorageResult<()> {
        match self {
            FileFormat::Npy => crate::npy::Dtype::for_schema(schema).map(|_| ()),
            FileFormat::Hdf5 => crate::hdf5_file::check_schema(schema),
            FileFormat::Tfrecords { .. } => crate::tfrecord::check_schema(schema),
            FileFormat::Csv => {
                for field in schema.fields() {
                    if field.data_type().is_nested() {
                        return Err(StorageError::UnsupportedFormat(format!(
                            "column \"{}\" is an array, which csv cannot hold; use parquet, arrow or tfrecords",
                            field.name()
                        )));
                    }
                }
                Ok(())
            }
            FileFormat::Parquet | FileFormat::Arrow => Ok(()),
        }
    }
}

/// Dates as days and timestamps as their integer value (microseconds since the epoch for
/// Quiver's), other arrays unchanged: how every numeric format stores time.
pub(crate) fn temporal_as_integers(
    array: &datafusion::arrow::array::ArrayRef,
) -> Result<datafusion::arrow::array::ArrayRef, datafusion::arrow::error::ArrowError> {
    use datafusion::arrow::datatypes::DataType;
    match array.data_type() {
        DataType::Date32 => datafusion::arrow::compute::cast(array, &DataType::Int32),
        DataType::Date64 | DataType::Timestamp(_, _) => {
            datafusion::arrow::compute::cast(array, &DataType::Int64)
        }
        _ => Ok(array.clone()),
    }
}

/// Bytes per block of a training dataset file (see `BlockFile`): large enough that a direct
/// write runs at the disk's speed (8 MiB measured twice as fast as 1 MiB here).
pub(crate) const FILE_BLOCK_BYTES: usize = 8 << 20;

/// The open file of one split.
enum FileWriter {
    Parquet(ParallelParquetWriter<BlockFile>),
    Csv(csv::Writer<BlockFile>),
    Arrow(IpcWriter<BlockFile>),
    Tfrecords(TfRecordWriter<BlockFile>),
    TfrecordsGzip(TfRecordWriter<GzEncoder<BlockFile>>),
    Npy(NpyWriter),
    Hdf5(Hdf5Writer),
}

/// What one split holds so far.
struct SplitFiles {
    dir: PathBuf,
    current: Option<FileWriter>,
    files: usize,
    rows_in_file: usize,
    rows: u64,
}

/// Writes a dataset's splits into a staging directory.
pub struct DatasetWriter {
    staging: PathBuf,
    format: FileFormat,
    schema: SchemaRef,
    rows_per_file: usize,
    splits: Vec<SplitFiles>,
}

impl DatasetWriter {
    /// Starts a dataset in `staging` (created, and removed again if the write is abandoned).
    pub fn create(
        staging: &Path,
        format: FileFormat,
        schema: SchemaRef,
        split_names: &[String],
        rows_per_file: usize,
    ) -> StorageResult<DatasetWriter> {
        format.check_schema(&schema)?;
        let mut splits = Vec::with_capacity(split_names.len());
        for name in split_names {
            let dir = staging.join(name);
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
            splits.push(SplitFiles {
                dir,
                current: None,
                files: 0,
                rows_in_file: 0,
                rows: 0,
            });
        }
        Ok(DatasetWriter {
            staging: staging.to_path_buf(),
            format,
            schema,
            rows_per_file: rows_per_file.max(1),
            splits,
        })
    }

    /// Appends rows to split `split` (an index into the names given at creation).
    pub fn write(&mut self, split: usize, batch: &RecordBatch) -> StorageResult<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let format = self.format;
            let schema = self.schema.clone();
            let rows_per_file = self.rows_per_file;
            let files = self
                .splits
                .get_mut(split)
                .ok_or_else(|| StorageError::Internal(format!("no split {split}")))?;
            // npy and hdf5 are one file per split; the others start a new file every so many rows.
            if files.current.is_some() && format.is_sharded() && files.rows_in_file >= rows_per_file
            {
                close(files.current.take(), &files.dir)?;
            }
            if files.current.is_none() {
                let path =
                    files
                        .dir
                        .join(format!("part-{:05}.{}", files.files, format.extension()));
                files.current = Some(open(&path, format, &schema)?);
                files.files += 1;
                files.rows_in_file = 0;
            }
            let room = match format.is_sharded() {
                false => usize::MAX,
                true => rows_per_file - files.rows_in_file,
            };
            let take = room.min(batch.num_rows() - offset);
            let slice = batch.slice(offset, take);
            if let Some(writer) = files.current.as_mut() {
                write(writer, &slice)?;
            }
            files.rows_in_file += take;
            files.rows += take as u64;
            offset += take;
        }
        Ok(())
    }

    /// Closes every file and syncs them; returns the rows written per split.
    pub fn finish(mut self) -> StorageResult<Vec<u64>> {
        let mut rows = Vec::with_capacity(self.splits.len());
        for split in &mut self.splits {
            if split.current.is_none() && split.files == 0 && !self.format.is_sharded() {
                // An empty split is still an array (of shape (0, columns)) or a file of datasets.
                let path = split
                    .dir
                    .join(format!("part-00000.{}", self.format.extension()));
                split.current = Some(open(&path, self.format, &self.schema)?);
            }
            close(split.current.take(), &split.dir)?;
            if self.format == FileFormat::Npy {
                write_npy_columns(&split.dir, &self.schema)?;
            }
            rows.push(split.rows);
        }
        sync_dir_tree(&self.staging)?;
        Ok(rows)
    }
}

/// npy arrays have no column names: `columns.json` beside the array records them, with the
/// element type.
fn write_npy_columns(dir: &Path, schema: &SchemaRef) -> StorageResult<()> {
    let dtype = crate::npy::Dtype::for_schema(schema)?;
    let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    let text = serde_json::json!({ "columns": names, "dtype": dtype.descr() }).to_string();
    let path = dir.join("columns.json");
    let mut file = File::create(&path).map_err(|e| StorageError::io(&path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| StorageError::io(&path, e))
}

/// How training dataset Parquet files are encoded. zstd, as pyarrow users choose for training
/// data. Pages are bounded by size (1 MiB), not also by 20,000 rows as the writer's default: a
/// trainer reads the file whole, so the finer page index buys nothing, and larger pages compress
/// better and cost less per value. Floating-point columns skip the dictionary: continuous features
/// seldom repeat, and one that does not fills the dictionary's page only to fall back to plain
/// values, after paying for hashing every value (the hashing was 30% of an export's time). Other
/// columns keep it (categories, counts, flags). Measured on 10M rows x 50 doubles: 8.4 s for 730 MB
/// with the defaults, 5.3 s for 120 MB with these (docs/performance.md).
fn parquet_properties(schema: &SchemaRef) -> WriterProperties {
    let mut properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_data_page_row_count_limit(usize::MAX);
    for field in schema.fields() {
        if field.data_type().is_floating() {
            properties = properties
                .set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
        }
    }
    properties.build()
}

fn open(path: &Path, format: FileFormat, schema: &SchemaRef) -> StorageResult<FileWriter> {
    // Every format's bytes go through a BlockFile (see block_file.rs): written around the page
    // cache on a thread of the file's own, so encoding the next rows overlaps writing.
    let create = || BlockFile::create(path, FILE_BLOCK_BYTES);
    Ok(match format {
        FileFormat::Parquet => {
            let properties = parquet_properties(schema);
            FileWriter::Parquet(ParallelParquetWriter::try_new(
                create()?,
                schema.clone(),
                properties,
            )?)
        }
        FileFormat::Csv => {
            FileWriter::Csv(csv::WriterBuilder::new().with_header(true).build(create()?))
        }
        FileFormat::Arrow => FileWriter::Arrow(IpcWriter::try_new(create()?, schema)?),
        FileFormat::Tfrecords { gzip: false } => {
            FileWriter::Tfrecords(TfRecordWriter::new(create()?, schema)?)
        }
        FileFormat::Tfrecords { gzip: true } => FileWriter::TfrecordsGzip(TfRecordWriter::new(
            GzEncoder::new(create()?, flate2::Compression::default()),
            schema,
        )?),
        FileFormat::Npy => FileWriter::Npy(NpyWriter::create(path, schema)?),
        FileFormat::Hdf5 => FileWriter::Hdf5(Hdf5Writer::create(path, schema)?),
    })
}

fn write(writer: &mut FileWriter, batch: &RecordBatch) -> StorageResult<()> {
    match writer {
        FileWriter::Parquet(w) => w.write(batch)?,
        FileWriter::Csv(w) => w.write(batch)?,
        FileWriter::Arrow(w) => w.write(batch)?,
        FileWriter::Tfrecords(w) => w.write(batch)?,
        FileWriter::TfrecordsGzip(w) => w.write(batch)?,
        FileWriter::Npy(w) => w.write(batch)?,
        FileWriter::Hdf5(w) => w.write(batch)?,
    }
    Ok(())
}

/// Finishes a split's open file and syncs it; `dir` (the split's directory) names it in errors.
fn close(writer: Option<FileWriter>, dir: &Path) -> StorageResult<()> {
    let io = |e: std::io::Error| StorageError::io(dir, e);
    let flush = |out: BlockFile| out.finish(|_| {}).map(|_| ());
    match writer {
        None => Ok(()),
        Some(FileWriter::Parquet(w)) => flush(w.into_inner()?),
        Some(FileWriter::Csv(w)) => flush(w.into_inner()),
        Some(FileWriter::Arrow(mut w)) => {
            w.finish()?;
            flush(w.into_inner()?)
        }
        Some(FileWriter::Tfrecords(w)) => flush(w.finish()?),
        Some(FileWriter::TfrecordsGzip(w)) => flush(w.finish()?.finish().map_err(io)?),
        Some(FileWriter::Npy(w)) => w.finish().map(|_| ()),
        Some(FileWriter::Hdf5(w)) => w.finish().map(|_| ()),
    }
}

fn sync_dir_tree(dir: &Path) -> StorageResult<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let path = entry.map_err(|e| StorageError::io(dir, e))?.path();
        if path.is_dir() {
            sync_dir_tree(&path)?;
        }
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

/// Whether any of these splits already has a directory at `location`.
pub async fn splits_exist(location: &StoreLocation, splits: &[String]) -> StorageResult<bool> {
    for split in splits {
        let exists = match location {
            StoreLocation::Local(root) => {
                let dir = root.join(split);
                tokio::fs::try_exists(&dir)
                    .await
                    .map_err(|e| StorageError::io(&dir, e))?
            }
            StoreLocation::Remote { store, prefix, .. } => {
                let listing = store
                    .list_with_delimiter(Some(&object_path(prefix, split)))
                    .await?;
                !listing.objects.is_empty() || !listing.common_prefixes.is_empty()
            }
        };
        if exists {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Moves the staged splits to `location`: a rename on this machine's disk (a copy when the
/// location is on another file system), an upload to an object store.
pub async fn publish(
    staging: &Path,
    location: &StoreLocation,
    splits: &[String],
) -> StorageResult<()> {
    match location {
        StoreLocation::Local(root) => {
            tokio::fs::create_dir_all(root)
                .await
                .map_err(|e| StorageError::io(root, e))?;
            for split in splits {
                let from = staging.join(split);
                let to = root.join(split);
                if tokio::fs::rename(&from, &to).await.is_err() {
                    copy_dir(&from, &to).await?;
                }
            }
            let root = root.clone();
            tokio::task::spawn_blocking(move || {
                File::open(&root)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| StorageError::io(&root, e))
            })
            .await
            .map_err(|e| StorageError::Internal(e.to_string()))?
        }
        StoreLocation::Remote { store, prefix, .. } => {
            for split in splits {
                let dir = staging.join(split);
                let mut entries = tokio::fs::read_dir(&dir)
                    .await
                    .map_err(|e| StorageError::io(&dir, e))?;
                while let Some(entry) = entries
                    .next_entry()
                    .await
                    .map_err(|e| StorageError::io(&dir, e))?
                {
                    let name = entry.file_name().to_string_lossy().to_string();
                    let target = object_path(&object_path(prefix, split), &name);
                    upload(store.as_ref(), &entry.path(), target).await?;
                }
            }
            Ok(())
        }
    }
}

async fn copy_dir(from: &Path, to: &Path) -> StorageResult<()> {
    tokio::fs::create_dir_all(to)
        .await
        .map_err(|e| StorageError::io(to, e))?;
    let mut entries = tokio::fs::read_dir(from)
        .await
        .map_err(|e| StorageError::io(from, e))?;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| StorageError::io(from, e))?
    {
        let target = to.join(entry.file_name());
        tokio::fs::copy(entry.path(), &target)
            .await
            .map_err(|e| StorageError::io(&target, e))?;
    }
    Ok(())
}

async fn upload(store: &dyn ObjectStore, file: &Path, target: ObjectPath) -> StorageResult<()> {
    use tokio::io::AsyncReadExt;
    let mut source = tokio::fs::File::open(file)
        .await
        .map_err(|e| StorageError::io(file, e))?;
    let mut upload = object_store::WriteMultipart::new(store.put_multipart(&target).await?);
    let mut chunk = vec![0u8; 8 << 20];
    loop {
        let read = source
            .read(&mut chunk)
            .await
            .map_err(|e| StorageError::io(file, e))?;
        if read == 0 {
            break;
        }
        upload.wait_for_capacity(4).await?;
        upload.write(&chunk[..read]);
    }
    upload.finish().await?;
    Ok(())
}

/// Removes these splits' files from `location` (a dropped dataset, or one being written again).
pub async fn remove_splits(location: &StoreLocation, splits: &[String]) -> StorageResult<()> {
    for split in splits {
        match location {
            StoreLocation::Local(root) => {
                let dir = root.join(split);
                match tokio::fs::remove_dir_all(&dir).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io(&dir, e)),
                }
            }
            StoreLocation::Remote { store, prefix, .. } => {
                use futures::TryStreamExt;
                let objects: Vec<ObjectPath> = store
                    .list(Some(&object_path(prefix, split)))
                    .map_ok(|meta| meta.location)
                    .try_collect()
                    .await?;
                for object in objects {
                    store.delete(&object).await?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(rows: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(Float64Array::from_iter_values((0..rows).map(|i| i as f64))),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn splits_are_sharded_staged_then_published() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        let splits = vec!["train".to_string(), "test".to_string()];
        let data = batch(25);
        let mut writer =
            DatasetWriter::create(&staging, FileFormat::Csv, data.schema(), &splits, 10).unwrap();
        writer.write(0, &data).unwrap();
        writer.write(1, &data.slice(0, 3)).unwrap();
        assert_eq!(writer.finish().unwrap(), vec![25, 3]);
        let location = StoreLocation::Local(dir.path().join("td"));
        assert!(!splits_exist(&location, &splits).await.unwrap());
        publish(&staging, &location, &splits).await.unwrap();
        let mut train: Vec<String> = std::fs::read_dir(dir.path().join("td/train"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        train.sort();
        assert_eq!(
            train,
            vec!["part-00000.csv", "part-00001.csv", "part-00002.csv"]
        );
        let last = std::fs::read_to_string(dir.path().join("td/train/part-00002.csv")).unwrap();
        assert_eq!(last.lines().count(), 6, "a header and five rows: {last}");
        assert!(splits_exist(&location, &splits).await.unwrap());
        remove_splits(&location, &splits).await.unwrap();
        assert!(!splits_exist(&location, &splits).await.unwrap());
    }

    /// The encodings `parquet_properties` chooses: floating point without a dictionary, other
    /// columns with one, pages bounded by bytes only.
    #[test]
    fn parquet_floats_skip_the_dictionary_and_pages_are_not_cut_by_rows() {
        use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        let data = batch(50_000);
        let splits = vec!["train".to_string()];
        let mut writer = DatasetWriter::create(
            &staging,
            FileFormat::Parquet,
            data.schema(),
            &splits,
            1_000_000,
        )
        .unwrap();
        writer.write(0, &data).unwrap();
        writer.finish().unwrap();
        let file = File::open(staging.join("train/part-00000.parquet")).unwrap();
        let reader = SerializedFileReader::new(file).unwrap();
        let group = reader.metadata().row_group(0);
        let (id, x) = (group.column(0), group.column(1));
        assert!(id.dictionary_page_offset().is_some(), "{id:?}");
        assert!(x.dictionary_page_offset().is_none(), "{x:?}");
        // 50,000 doubles are 400 KB: one page, where a 20,000-row limit would make three.
        let pages = reader
            .get_row_group(0)
            .unwrap()
            .get_column_page_reader(1)
            .unwrap()
            .count();
        assert_eq!(pages, 1);
    }

    #[test]
    fn npy_refuses_text_before_writing_anything() {
        let schema = Arc::new(Schema::new(vec![Field::new("c", DataType::Utf8, true)]));
        let dir = tempfile::tempdir().unwrap();
        let result = DatasetWriter::create(dir.path(), FileFormat::Npy, schema, &[], 10);
        assert!(matches!(result, Err(StorageError::UnsupportedFormat(_))));
    }
}

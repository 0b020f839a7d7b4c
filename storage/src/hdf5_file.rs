//! HDF5 files (`h5py.File(path)["column"]`): one 1-D dataset per column, named by the column, with
//! the column order in the root attribute `columns`.
//!
//! Datasets are chunked and grow as batches arrive. Types: integers and booleans as int64 (booleans
//! 0/1), dates as int64 days and timestamps as int64 microseconds since the epoch, REAL as float32,
//! other floating point as float64, text as variable-length UTF-8. NULL is NaN in a float
//! dataset; the other types have no NULL, so a NULL there is an error.

use std::path::Path;
use std::str::FromStr;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type, SchemaRef};
use hdf5::types::VarLenUnicode;
use hdf5::{Dataset, File, H5Type};

use crate::dataset::temporal_as_integers;
use crate::error::{StorageError, StorageResult};

/// Rows per chunk of every dataset.
const CHUNK_ROWS: usize = 1 << 16;

/// How a column is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Float32,
    Float64,
    Int64,
    Text,
}

impl Kind {
    fn of(name: &str, data_type: &DataType) -> StorageResult<Kind> {
        Ok(match data_type {
            DataType::Float32 => Kind::Float32,
            DataType::Float16 | DataType::Float64 => Kind::Float64,
            t if t.is_integer() => Kind::Int64,
            DataType::Boolean | DataType::Date32 | DataType::Timestamp(_, _) => Kind::Int64,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Text,
            other => {
                return Err(StorageError::UnsupportedFormat(format!(
                    "column \"{name}\" of type {other} cannot be an hdf5 dataset; use parquet, arrow or tfrecords"
                )));
            }
        })
    }
}

/// Checks that every column can be written, before any row is computed.
pub fn check_schema(schema: &SchemaRef) -> StorageResult<()> {
    for field in schema.fields() {
        Kind::of(field.name(), field.data_type())?;
        if field.name().contains('/') || field.name() == "." {
            return Err(StorageError::UnsupportedFormat(format!(
                "column \"{}\" cannot name an hdf5 dataset (a / separates groups); rename it",
                field.name()
            )));
        }
    }
    Ok(())
}

fn h5(path: &str) -> impl Fn(hdf5::Error) -> StorageError + '_ {
    move |e| StorageError::Internal(format!("{path}: {e}"))
}

/// Writes one HDF5 file, a batch at a time.
pub struct Hdf5Writer {
    file: File,
    path: String,
    columns: Vec<(String, Kind, Dataset)>,
    rows: usize,
}

impl Hdf5Writer {
    pub fn create(path: &Path, schema: &SchemaRef) -> StorageResult<Hdf5Writer> {
        check_schema(schema)?;
        let display = path.display().to_string();
        let file = File::create(path).map_err(h5(&display))?;
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let kind = Kind::of(field.name(), field.data_type())?;
            let builder = match kind {
                Kind::Float32 => file.new_dataset::<f32>(),
                Kind::Float64 => file.new_dataset::<f64>(),
                Kind::Int64 => file.new_dataset::<i64>(),
                Kind::Text => file.new_dataset::<VarLenUnicode>(),
            };
            let dataset = builder
                .chunk(CHUNK_ROWS)
                .shape(0..)
                .create(field.name().as_str())
                .map_err(h5(&display))?;
            columns.push((field.name().clone(), kind, dataset));
        }
        let names = columns
            .iter()
            .map(|(name, _, _)| VarLenUnicode::from_str(name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StorageError::UnsupportedFormat(format!("a column name: {e}")))?;
        file.new_attr::<VarLenUnicode>()
            .shape(names.len())
            .create("columns")
            .and_then(|attribute| attribute.write(&names))
            .map_err(h5(&display))?;
        Ok(Hdf5Writer {
            file,
            path: display,
            columns,
            rows: 0,
        })
    }

    /// Appends the rows of `batch`.
    pub fn write(&mut self, batch: &RecordBatch) -> StorageResult<()> {
        let rows = batch.num_rows();
        for ((name, kind, dataset), array) in self.columns.iter().zip(batch.columns()) {
            let start = self.rows;
            let error = h5(&self.path);
            match kind {
                Kind::Float32 => {
                    let values = cast(array, &DataType::Float32)?;
                    let floats = values.as_primitive::<Float32Type>();
                    let data: Vec<f32> = (0..rows)
                        .map(|i| {
                            if floats.is_null(i) {
                                f32::NAN
                            } else {
                                floats.value(i)
                            }
                        })
                        .collect();
                    append(dataset, &data, start).map_err(error)?;
                }
                Kind::Float64 => {
                    let values = cast(array, &DataType::Float64)?;
                    let floats = values.as_primitive::<Float64Type>();
                    let data: Vec<f64> = (0..rows)
                        .map(|i| {
                            if floats.is_null(i) {
                                f64::NAN
                            } else {
                                floats.value(i)
                            }
                        })
                        .collect();
                    append(dataset, &data, start).map_err(error)?;
                }
                Kind::Int64 => {
                    no_nulls(array, name)?;
                    let values = cast(&temporal_as_integers(array)?, &DataType::Int64)?;
                    append(dataset, values.as_primitive::<Int64Type>().values(), start)
                        .map_err(error)?;
                }
                Kind::Text => {
                    no_nulls(array, name)?;
                    let values = cast(array, &DataType::Utf8)?;
                    let data = values
                        .as_string::<i32>()
                        .iter()
                        .map(|s| VarLenUnicode::from_str(s.unwrap_or_default()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| {
                            StorageError::UnsupportedFormat(format!("column \"{name}\": {e}"))
                        })?;
                    append(dataset, &data, start).map_err(error)?;
                }
            }
        }
        self.rows += rows;
        Ok(())
    }

    /// Flushes the file to disk and closes it.
    pub fn finish(self) -> StorageResult<u64> {
        self.file.flush().map_err(h5(&self.path))?;
        let rows = self.rows as u64;
        drop(self.columns);
        self.file.close().map_err(h5(&self.path))?;
        let path = Path::new(&self.path);
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| StorageError::io(path, e))?;
        Ok(rows)
    }
}

fn append<T: H5Type>(dataset: &Dataset, values: &[T], start: usize) -> hdf5::Result<()> {
    dataset.resize(start + values.len())?;
    dataset.write_slice(values, start..start + values.len())
}

fn no_nulls(array: &ArrayRef, name: &str) -> StorageResult<()> {
    if array.null_count() > 0 {
        return Err(StorageError::NullNotAllowed(format!(
            "column \"{name}\" has a NULL, which an hdf5 dataset of integers or text cannot hold; \
             COALESCE it or cast the column to double precision"
        )));
    }
    Ok(())
}

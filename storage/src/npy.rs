//! NumPy `.npy` files: one 2-D array (rows x columns, C order) per file, as `numpy.load` reads it.
//!
//! The element type is decided by the columns: float32 when every column is REAL, int64 when every
//! column is an integer, boolean, date (days since the epoch) or timestamp (microseconds since the
//! epoch), float64 otherwise. NULL is NaN in a float array; an int64 array cannot hold it. The row
//! count is only known at the end, so the header is written with room for any count and rewritten
//! when the file is finished.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type, SchemaRef};

use crate::dataset::temporal_as_integers;
use crate::error::{StorageError, StorageResult};

/// The element type of the array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Float32,
    Float64,
    Int64,
}

impl Dtype {
    /// The `descr` NumPy records: little-endian.
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::Float32 => "<f4",
            Dtype::Float64 => "<f8",
            Dtype::Int64 => "<i8",
        }
    }

    fn width(self) -> usize {
        match self {
            Dtype::Float32 => 4,
            Dtype::Float64 | Dtype::Int64 => 8,
        }
    }

    /// The element type for these columns, or an error naming a column that is not a number.
    pub fn for_schema(schema: &SchemaRef) -> StorageResult<Dtype> {
        let mut all_real = true;
        let mut all_integer = true;
        for field in schema.fields() {
            let data_type = field.data_type();
            let integer = data_type.is_integer()
                || matches!(
                    data_type,
                    DataType::Boolean | DataType::Date32 | DataType::Timestamp(_, _)
                );
            if !integer && !data_type.is_floating() {
                return Err(StorageError::UnsupportedFormat(format!(
                    "column \"{}\" of type {data_type} cannot go in an npy array of numbers; \
                     transform it (one_hot or label_encoder), leave it out, or use another format",
                    field.name()
                )));
            }
            all_real &= *data_type == DataType::Float32;
            all_integer &= integer;
        }
        Ok(if all_real {
            Dtype::Float32
        } else if all_integer {
            Dtype::Int64
        } else {
            Dtype::Float64
        })
    }
}

/// Room for the row count in the header: any u64 fits.
const COUNT_WIDTH: usize = 20;

fn header(dtype: Dtype, rows: u64, columns: usize) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({rows:<COUNT_WIDTH$}, {columns}), }}",
        dtype.descr()
    );
    // magic (6) + version (2) + header length (2) + dict + padding + '\n', a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let header_len = dict.len() + padding + 1;
    let mut bytes = Vec::with_capacity(10 + header_len);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header_len as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend(std::iter::repeat_n(b' ', padding));
    bytes.push(b'\n');
    bytes
}

/// Writes one `.npy` file, a batch at a time.
pub struct NpyWriter {
    file: BufWriter<File>,
    path: String,
    dtype: Dtype,
    columns: Vec<String>,
    rows: u64,
    /// One batch in C order, reused.
    buffer: Vec<u8>,
}

impl NpyWriter {
    pub fn create(path: &Path, schema: &SchemaRef) -> StorageResult<NpyWriter> {
        let dtype = Dtype::for_schema(schema)?;
        let file = File::create(path).map_err(|e| StorageError::io(path, e))?;
        let mut writer = NpyWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            path: path.display().to_string(),
            dtype,
            columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
            rows: 0,
            buffer: Vec::new(),
        };
        let placeholder = header(dtype, 0, schema.fields().len());
        writer.write_all_bytes(&placeholder)?;
        Ok(writer)
    }

    fn write_all_bytes(&mut self, bytes: &[u8]) -> StorageResult<()> {
        self.file.write_all(bytes).map_err(|e| StorageError::Io {
            path: self.path.clone(),
            source: e,
        })
    }

    /// Appends the rows of `batch`: each column's elements as little-endian bytes, then
    /// interleaved row by row (reading every column in order and writing the rows in order, so
    /// both sides stream through memory).
    pub fn write(&mut self, batch: &RecordBatch) -> StorageResult<()> {
        let rows = batch.num_rows();
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (index, array) in batch.columns().iter().enumerate() {
            columns.push(self.numbers(array, &self.columns[index])?);
        }
        self.buffer.clear();
        self.buffer
            .resize(rows * self.dtype.width() * columns.len(), 0);
        match self.dtype {
            Dtype::Float32 => interleave(
                &mut self.buffer,
                &float_columns::<Float32Type, 4>(&columns, f32::NAN),
            ),
            Dtype::Float64 => interleave(
                &mut self.buffer,
                &float_columns::<Float64Type, 8>(&columns, f64::NAN),
            ),
            Dtype::Int64 => {
                let mut elements = Vec::with_capacity(columns.len());
                for (values, name) in columns.iter().zip(&self.columns) {
                    if values.null_count() > 0 {
                        return Err(StorageError::NullNotAllowed(format!(
                            "column \"{name}\" has a NULL, which an npy array of int64 cannot hold; \
                             COALESCE it or cast a column to double precision"
                        )));
                    }
                    let ints = values.as_primitive::<Int64Type>().values();
                    elements.push(ints.iter().map(|v| v.to_le_bytes()).collect());
                }
                interleave(&mut self.buffer, &elements)
            }
        }
        let buffer = std::mem::take(&mut self.buffer);
        let written = self.write_all_bytes(&buffer);
        self.buffer = buffer;
        written?;
        self.rows += rows as u64;
        Ok(())
    }

    /// A column as the array's element type; dates and timestamps by their integer value.
    fn numbers(&self, array: &ArrayRef, name: &str) -> StorageResult<ArrayRef> {
        let integer = temporal_as_integers(array)?;
        let target = match self.dtype {
            Dtype::Float32 => DataType::Float32,
            Dtype::Float64 => DataType::Float64,
            Dtype::Int64 => DataType::Int64,
        };
        cast(&integer, &target).map_err(|e| {
            StorageError::UnsupportedFormat(format!(
                "column \"{name}\" cannot be written to npy: {e}"
            ))
        })
    }

    /// Writes the final header and syncs the file; returns the element type and rows written.
    pub fn finish(mut self) -> StorageResult<(Dtype, u64)> {
        let io = |path: &str, e| StorageError::Io {
            path: path.to_string(),
            source: e,
        };
        self.file.flush().map_err(|e| io(&self.path, e))?;
        let header = header(self.dtype, self.rows, self.columns.len());
        let file = self.file.get_mut();
        file.seek(SeekFrom::Start(0))
            .map_err(|e| io(&self.path, e))?;
        file.write_all(&header).map_err(|e| io(&self.path, e))?;
        file.sync_all().map_err(|e| io(&self.path, e))?;
        Ok((self.dtype, self.rows))
    }
}

/// Float columns (of type `T`) as little-endian elements, NULL as `null` (NaN).
fn float_columns<T, const WIDTH: usize>(
    columns: &[ArrayRef],
    null: T::Native,
) -> Vec<Vec<[u8; WIDTH]>>
where
    T: datafusion::arrow::datatypes::ArrowPrimitiveType,
    T::Native: LittleEndian<WIDTH>,
{
    columns
        .iter()
        .map(|column| float_bytes(column.as_primitive::<T>(), null))
        .collect()
}

/// A float column's elements as little-endian bytes, NULL as `null` (NaN).
fn float_bytes<T, const WIDTH: usize>(
    values: &datafusion::arrow::array::PrimitiveArray<T>,
    null: T::Native,
) -> Vec<[u8; WIDTH]>
where
    T: datafusion::arrow::datatypes::ArrowPrimitiveType,
    T::Native: LittleEndian<WIDTH>,
{
    match values.nulls() {
        None => values.values().iter().map(|v| v.le_bytes()).collect(),
        Some(nulls) => values
            .values()
            .iter()
            .zip(nulls.iter())
            .map(|(v, valid)| if valid { v.le_bytes() } else { null.le_bytes() })
            .collect(),
    }
}

/// The little-endian bytes of an element type.
trait LittleEndian<const WIDTH: usize>: Copy {
    fn le_bytes(self) -> [u8; WIDTH];
}

impl LittleEndian<4> for f32 {
    fn le_bytes(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

impl LittleEndian<8> for f64 {
    fn le_bytes(self) -> [u8; 8] {
        self.to_le_bytes()
    }
}

/// Writes `columns` (each one element per row) into `rows` in C order: row after row, each row
/// its columns' elements in column order. `rows` holds exactly that many bytes.
fn interleave<const WIDTH: usize>(rows: &mut [u8], columns: &[Vec<[u8; WIDTH]>]) {
    let stride = WIDTH * columns.len();
    if stride == 0 {
        return;
    }
    for (row, out) in rows.chunks_exact_mut(stride).enumerate() {
        for (column, cell) in columns.iter().zip(out.chunks_exact_mut(WIDTH)) {
            cell.copy_from_slice(&column[row]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_keeps_its_length_and_alignment_for_any_count() {
        for rows in [0, 7, u64::MAX] {
            let bytes = header(Dtype::Float64, rows, 50);
            assert_eq!(bytes.len() % 64, 0);
            assert_eq!(bytes.len(), header(Dtype::Float64, 0, 50).len());
            assert_eq!(*bytes.last().unwrap(), b'\n');
        }
    }

    #[test]
    fn columns_are_interleaved_in_c_order() {
        let columns = vec![
            vec![[1u8, 1], [2, 2], [3, 3]],
            vec![[7u8, 7], [8, 8], [9, 9]],
        ];
        let mut rows = vec![0u8; 12];
        interleave(&mut rows, &columns);
        assert_eq!(rows, [1, 1, 7, 7, 2, 2, 8, 8, 3, 3, 9, 9]);
    }

    #[test]
    fn null_floats_become_the_null_value() {
        let values = datafusion::arrow::array::Float64Array::from(vec![Some(1.5), None]);
        let bytes: Vec<[u8; 8]> = float_bytes(&values, f64::NAN);
        assert_eq!(f64::from_le_bytes(bytes[0]), 1.5);
        assert!(f64::from_le_bytes(bytes[1]).is_nan());
    }
}

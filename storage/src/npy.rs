//! NumPy `.npy` files: one 2-D array (rows x columns, C order) per file, as `numpy.load` reads it.
//!
//! The element type is decided by the columns: float32 when every column is REAL, int64 when every
//! column is an integer, boolean, date (days since the epoch) or timestamp (microseconds since the
//! epoch), float64 otherwise. NULL is NaN in a float array; an int64 array cannot hold it. The row
//! count is only known at the end, so the header is written with room for any count and filled in
//! when the file is finished (its block is written last, see `BlockFile`).

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    ArrowNativeType, ArrowPrimitiveType, DataType, Float32Type, Float64Type, Int64Type, SchemaRef,
    ToByteSlice,
};

use crate::block_file::BlockFile;
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
    /// The `descr` NumPy records: the element type in this machine's byte order, in which the
    /// values are written (so they are copied, never byte-swapped).
    pub fn descr(self) -> &'static str {
        let little = cfg!(target_endian = "little");
        match (self, little) {
            (Dtype::Float32, true) => "<f4",
            (Dtype::Float64, true) => "<f8",
            (Dtype::Int64, true) => "<i8",
            (Dtype::Float32, false) => ">f4",
            (Dtype::Float64, false) => ">f8",
            (Dtype::Int64, false) => ">i8",
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
    file: BlockFile,
    dtype: Dtype,
    columns: Vec<String>,
    rows: u64,
    /// One row, for a row that starts in one block and ends in the next.
    straddling: Vec<u8>,
}

impl NpyWriter {
    pub fn create(path: &Path, schema: &SchemaRef) -> StorageResult<NpyWriter> {
        NpyWriter::with_blocks(path, schema, crate::dataset::FILE_BLOCK_BYTES)
    }

    fn with_blocks(
        path: &Path,
        schema: &SchemaRef,
        block_bytes: usize,
    ) -> StorageResult<NpyWriter> {
        let dtype = Dtype::for_schema(schema)?;
        let mut file = BlockFile::create(path, block_bytes)?;
        file.write_all(&header(dtype, 0, schema.fields().len()))?;
        Ok(NpyWriter {
            file,
            dtype,
            columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
            rows: 0,
            straddling: Vec::new(),
        })
    }

    /// Appends the rows of `batch`, in C order, straight into the file's blocks.
    pub fn write(&mut self, batch: &RecordBatch) -> StorageResult<()> {
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (index, array) in batch.columns().iter().enumerate() {
            columns.push(self.numbers(array, &self.columns[index])?);
        }
        match self.dtype {
            Dtype::Float32 => self.write_rows::<Float32Type>(&columns, Some(f32::NAN))?,
            Dtype::Float64 => self.write_rows::<Float64Type>(&columns, Some(f64::NAN))?,
            Dtype::Int64 => self.write_rows::<Int64Type>(&columns, None)?,
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Writes the rows of `columns` (arrays of `T`), NULL as `null` (an error without one).
    fn write_rows<T: ArrowPrimitiveType>(
        &mut self,
        columns: &[ArrayRef],
        null: Option<T::Native>,
    ) -> StorageResult<()> {
        let mut values: Vec<Cow<'_, [T::Native]>> = Vec::with_capacity(columns.len());
        for (array, name) in columns.iter().zip(&self.columns) {
            values.push(column_values::<T>(array.as_primitive::<T>(), null, name)?);
        }
        let row_bytes = std::mem::size_of::<T::Native>() * values.len();
        let rows = values.first().map_or(0, |column| column.len());
        let mut row = 0;
        while row < rows && row_bytes > 0 {
            let spare = self.file.spare();
            let fit = (spare.len() / row_bytes).min(rows - row);
            if fit == 0 {
                self.straddling.resize(row_bytes, 0);
                interleave(&values, row..row + 1, &mut self.straddling);
                let straddling = std::mem::take(&mut self.straddling);
                let written = self.file.write_all(&straddling);
                self.straddling = straddling;
                written?;
                row += 1;
            } else {
                interleave(&values, row..row + fit, &mut spare[..fit * row_bytes]);
                self.file.advance(fit * row_bytes)?;
                row += fit;
            }
        }
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
    pub fn finish(self) -> StorageResult<(Dtype, u64)> {
        let header = header(self.dtype, self.rows, self.columns.len());
        self.file
            .finish(|start| start[..header.len()].copy_from_slice(&header))?;
        Ok((self.dtype, self.rows))
    }
}

/// A column's values, NULL replaced by `null` (copied only when it has NULLs); without a `null`
/// a NULL is an error naming the column.
fn column_values<'a, T: ArrowPrimitiveType>(
    array: &'a PrimitiveArray<T>,
    null: Option<T::Native>,
    name: &str,
) -> StorageResult<Cow<'a, [T::Native]>> {
    let Some(nulls) = array.nulls().filter(|nulls| nulls.null_count() > 0) else {
        return Ok(Cow::Borrowed(array.values()));
    };
    let Some(null) = null else {
        return Err(StorageError::NullNotAllowed(format!(
            "column \"{name}\" has a NULL, which an npy array of int64 cannot hold; \
             COALESCE it or cast a column to double precision"
        )));
    };
    Ok(Cow::Owned(
        array
            .values()
            .iter()
            .zip(nulls.iter())
            .map(|(value, valid)| if valid { *value } else { null })
            .collect(),
    ))
}

/// Rows interleaved a few hundred at a time: the rows being written stay in the CPU's cache while
/// each column's values for them are read in order.
const INTERLEAVE_ROWS: usize = 256;

/// Writes rows `rows` of `columns` into `out` in C order: row after row, each row its columns'
/// elements in column order, in the machine's byte order (which the header's `descr` names).
/// `out` holds exactly those rows.
fn interleave<T: ArrowNativeType>(columns: &[Cow<'_, [T]>], rows: Range<usize>, out: &mut [u8]) {
    let width = std::mem::size_of::<T>();
    let stride = width * columns.len();
    if stride == 0 {
        return;
    }
    let mut first = rows.start;
    for out_rows in out.chunks_mut(INTERLEAVE_ROWS * stride) {
        let count = out_rows.len() / stride;
        for (column, values) in columns.iter().enumerate() {
            let cells = out_rows
                .chunks_exact_mut(stride)
                .map(|row| &mut row[column * width..(column + 1) * width]);
            for (cell, value) in cells.zip(&values[first..first + count]) {
                cell.copy_from_slice(std::slice::from_ref(value).to_byte_slice());
            }
        }
        first += count;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array};
    use datafusion::arrow::datatypes::{Field, Schema};

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
        let columns: Vec<Cow<'_, [i16]>> =
            vec![Cow::Owned(vec![1, 2, 3, 4]), Cow::Owned(vec![7, 8, 9, 10])];
        let mut rows = vec![0u8; 12];
        interleave(&columns, 1..4, &mut rows);
        let elements: Vec<i16> = rows
            .chunks_exact(2)
            .map(|b| i16::from_ne_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(elements, [2, 8, 3, 9, 4, 10]);
    }

    #[test]
    fn null_floats_become_the_null_value_and_null_integers_an_error() {
        let floats = Float64Array::from(vec![Some(1.5), None]);
        let values = column_values(&floats, Some(f64::NAN), "x").unwrap();
        assert_eq!(values[0], 1.5);
        assert!(values[1].is_nan());
        let ints = Int64Array::from(vec![Some(1), None]);
        assert!(matches!(
            column_values(&ints, None, "k"),
            Err(StorageError::NullNotAllowed(_))
        ));
    }

    /// Rows are written straight into the file's blocks; with small blocks most rows of a batch
    /// straddle none, some straddle two, and the header is filled in at the end.
    #[test]
    fn rows_across_blocks_read_back_in_c_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Float64, true),
            Field::new("b", DataType::Int64, false),
            Field::new("c", DataType::Float64, true),
        ]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part.npy");
        let mut writer = NpyWriter::with_blocks(&path, &schema, 4096).unwrap();
        let mut expected = Vec::new();
        for batch in 0..5i64 {
            let rows = 0..(300 + batch * 37);
            let ids: Vec<i64> = rows.clone().map(|r| batch * 1000 + r).collect();
            let a = Float64Array::from_iter(
                ids.iter()
                    .map(|id| (id % 11 != 0).then_some(*id as f64 / 4.0)),
            );
            let c = Float64Array::from_iter_values(ids.iter().map(|id| -(*id as f64)));
            let record = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(a.clone()),
                    Arc::new(Int64Array::from(ids.clone())),
                    Arc::new(c),
                ],
            )
            .unwrap();
            writer.write(&record).unwrap();
            for id in ids {
                let a = if id % 11 != 0 {
                    id as f64 / 4.0
                } else {
                    f64::NAN
                };
                expected.extend([a, id as f64, -(id as f64)]);
            }
        }
        let (dtype, rows) = writer.finish().unwrap();
        assert_eq!((dtype, rows), (Dtype::Float64, expected.len() as u64 / 3));
        let bytes = std::fs::read(&path).unwrap();
        let header_len = header(Dtype::Float64, 0, 3).len();
        assert_eq!(&bytes[..header_len], header(dtype, rows, 3).as_slice());
        let values: Vec<f64> = bytes[header_len..]
            .chunks_exact(8)
            .map(|b| f64::from_ne_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values.len(), expected.len());
        for (got, want) in values.iter().zip(&expected) {
            assert!(
                got == want || (got.is_nan() && want.is_nan()),
                "{got} != {want}"
            );
        }
    }
}

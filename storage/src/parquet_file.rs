//! A Parquet file whose columns are encoded on several threads at once.
//!
//! Why: encoding (dictionary, compression) is nearly all of a Parquet export's time, and
//! `ArrowWriter` encodes one column after another on the calling thread. The parquet crate's
//! lower-level writers encode each column independently (`ArrowColumnWriter`); here each batch's
//! columns are shared out among the cores, and a finished row group's column chunks are appended
//! in column order, so the file is what `ArrowWriter` would write with the same properties.

use std::io::Write;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
    compute_leaves,
};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::file::writer::SerializedFileWriter;

use crate::error::StorageResult;
use crate::{cores, on_threads};

pub(crate) struct ParallelParquetWriter<W: Write + Send> {
    file: SerializedFileWriter<W>,
    row_groups: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// The open row group's writers, one per leaf column, in the file's column order.
    columns: Vec<ArrowColumnWriter>,
    rows_in_group: usize,
    max_group_rows: usize,
    threads: usize,
}

impl<W: Write + Send> ParallelParquetWriter<W> {
    pub(crate) fn try_new(
        out: W,
        schema: SchemaRef,
        properties: WriterProperties,
    ) -> StorageResult<Self> {
        let max_group_rows = properties
            .max_row_group_row_count()
            .unwrap_or(usize::MAX)
            .max(1);
        // ArrowWriter writes the file's header and embeds the Arrow schema; its lower-level parts
        // take over from there.
        let (file, row_groups) = ArrowWriter::try_new(out, schema.clone(), Some(properties))?
            .into_serialized_writer()?;
        let columns = row_groups.create_column_writers(0)?;
        let threads = cores().min(columns.len()).max(1);
        Ok(ParallelParquetWriter {
            file,
            row_groups,
            schema,
            columns,
            rows_in_group: 0,
            max_group_rows,
            threads,
        })
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> StorageResult<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (self.max_group_rows - self.rows_in_group).min(batch.num_rows() - offset);
            self.encode(&batch.slice(offset, take))?;
            offset += take;
            self.rows_in_group += take;
            if self.rows_in_group == self.max_group_rows {
                self.close_row_group()?;
            }
        }
        Ok(())
    }

    /// Encodes the batch's columns into the open row group, a share of the columns per thread.
    fn encode(&mut self, batch: &RecordBatch) -> StorageResult<()> {
        let mut leaves: Vec<ArrowLeafColumn> = Vec::with_capacity(self.columns.len());
        for (field, array) in self.schema.fields().iter().zip(batch.columns()) {
            leaves.extend(compute_leaves(field, array)?);
        }
        let share = self.columns.len().div_ceil(self.threads).max(1);
        let work = self.columns.chunks_mut(share).zip(leaves.chunks(share));
        on_threads(work, |(writers, leaves)| {
            for (writer, leaf) in writers.iter_mut().zip(leaves) {
                writer.write(leaf)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Finishes the open row group's column chunks (on the threads too: closing writes a column's
    /// last page and its dictionary) and appends them to the file.
    fn close_row_group(&mut self) -> StorageResult<()> {
        let index = self.file.flushed_row_groups().len() + 1;
        let next = self.row_groups.create_column_writers(index)?;
        let writers = std::mem::replace(&mut self.columns, next);
        self.rows_in_group = 0;
        let mut shares: Vec<Vec<ArrowColumnWriter>> = Vec::with_capacity(self.threads);
        let share = writers.len().div_ceil(self.threads).max(1);
        let mut writers = writers.into_iter();
        loop {
            let part: Vec<ArrowColumnWriter> = writers.by_ref().take(share).collect();
            if part.is_empty() {
                break;
            }
            shares.push(part);
        }
        let closed = on_threads(shares, |share| {
            Ok(share
                .into_iter()
                .map(ArrowColumnWriter::close)
                .collect::<Result<Vec<ArrowColumnChunk>, ParquetError>>()?)
        })?;
        let mut row_group = self.file.next_row_group()?;
        for chunk in closed.into_iter().flatten() {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        Ok(())
    }

    /// Writes the last row group and the footer; returns the output.
    pub(crate) fn into_inner(mut self) -> StorageResult<W> {
        if self.rows_in_group > 0 {
            self.close_row_group()?;
        }
        Ok(self.file.into_inner()?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    /// The same rows written by ArrowWriter and by the parallel writer read back the same, with
    /// the same row groups.
    #[test]
    fn writes_what_arrow_writer_writes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batches: Vec<RecordBatch> = (0..4i64)
            .map(|b| {
                let ids: Vec<i64> = (b * 700..(b + 1) * 700).collect();
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(Int64Array::from(ids.clone())),
                    Arc::new(Float64Array::from_iter(
                        ids.iter().map(|i| (i % 5 != 0).then_some(*i as f64 * 0.5)),
                    )),
                    Arc::new(StringArray::from_iter(
                        ids.iter()
                            .map(|i| (i % 7 != 0).then(|| format!("n{}", i % 13))),
                    )),
                ];
                RecordBatch::try_new(schema.clone(), columns).unwrap()
            })
            .collect();
        let properties = || {
            WriterProperties::builder()
                .set_max_row_group_row_count(Some(1000))
                .build()
        };
        let mut parallel =
            ParallelParquetWriter::try_new(Vec::new(), schema.clone(), properties()).unwrap();
        let mut plain =
            ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties())).unwrap();
        for batch in &batches {
            parallel.write(batch).unwrap();
            plain.write(batch).unwrap();
        }
        let parallel = bytes::Bytes::from(parallel.into_inner().unwrap());
        let plain = bytes::Bytes::from(plain.into_inner().unwrap());
        let read = |file: bytes::Bytes| {
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            let groups: Vec<i64> = builder
                .metadata()
                .row_groups()
                .iter()
                .map(|g| g.num_rows())
                .collect();
            let rows: Vec<RecordBatch> = builder.build().unwrap().map(|b| b.unwrap()).collect();
            (
                groups,
                datafusion::arrow::compute::concat_batches(&schema, &rows).unwrap(),
            )
        };
        let (parallel_groups, parallel_rows) = read(parallel);
        let (plain_groups, plain_rows) = read(plain);
        assert_eq!(parallel_groups, vec![1000, 1000, 800]);
        assert_eq!(parallel_groups, plain_groups);
        assert_eq!(parallel_rows, plain_rows);
        assert_eq!(
            parallel_rows,
            datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap()
        );
    }
}

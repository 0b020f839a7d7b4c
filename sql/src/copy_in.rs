//! `COPY ... FROM STDIN`: the data is parsed as it arrives, a chunk of whole records at a time,
//! into Arrow arrays of the target types; the whole COPY is then written as one commit. Memory is
//! bounded by the Arrow size of the data, not by its text plus a string per field.
//!
//! The first bad record is remembered and the rest of the stream is discarded; the error is
//! reported when the client ends the COPY, and nothing is written.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanArray, ListBuilder, PrimitiveBuilder, RecordBatch,
    StringArray, StringBuilder, new_null_array,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{
    Field, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
};
use quiver_catalog::{ColumnType, Relation};

use crate::Engine;
use crate::binary_copy::BinaryReader;
use crate::copy::{CopyFormat, CopyOptions};
use crate::error::{SqlError, SqlResult};
use crate::relation::RelationSink;
use crate::session::CommandTag;
use crate::transaction::BlockWrites;
use crate::types::{arrow_type, planning_schema};

/// How much text is buffered before the complete records in it are parsed.
const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// A COPY FROM STDIN in progress.
#[derive(Debug)]
pub struct CopyIn {
    engine: Arc<Engine>,
    relation: Relation,
    /// The relation's column index for each column of the COPY data, in data order.
    targets: Vec<usize>,
    options: CopyOptions,
    /// Received text not yet parsed: at most one partial record after each parse.
    pending: Vec<u8>,
    /// Whether the CSV header line is still to be skipped.
    header_pending: bool,
    /// The parsed records, as batches of the relation's columns.
    batches: Vec<RecordBatch>,
    rows: usize,
    /// The end-of-data marker `\.` was seen: later data is ignored, as in PostgreSQL.
    ended: bool,
    failure: Option<SqlError>,
    binary: BinaryReader,
    /// The open transaction block's writes, which the rows join instead of committing now.
    block: Option<Arc<BlockWrites>>,
}

impl CopyIn {
    pub(crate) fn new(
        engine: Arc<Engine>,
        relation: Relation,
        targets: Vec<usize>,
        options: CopyOptions,
        block: Option<Arc<BlockWrites>>,
    ) -> Self {
        CopyIn {
            engine,
            relation,
            targets,
            header_pending: options.header,
            options,
            pending: Vec::new(),
            batches: Vec::new(),
            rows: 0,
            ended: false,
            failure: None,
            binary: BinaryReader::default(),
            block,
        }
    }

    /// How many columns the client sends per row.
    pub fn columns(&self) -> usize {
        self.targets.len()
    }

    /// The format of the data.
    pub fn format(&self) -> CopyFormat {
        self.options.format
    }

    /// Takes a chunk of CopyData.
    pub fn receive(&mut self, chunk: &[u8]) {
        if self.failure.is_some() || self.ended {
            return;
        }
        self.pending.extend_from_slice(chunk);
        if self.pending.len() < CHUNK_BYTES {
            return;
        }
        let split = match self.options.format {
            CopyFormat::Text => self
                .pending
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|i| i + 1),
            CopyFormat::Csv => last_csv_record_end(&self.pending, &self.options),
            // The binary reader stops at the last complete tuple by itself.
            CopyFormat::Binary => Some(self.pending.len()),
        };
        let Some(split) = split else { return };
        let pending = std::mem::take(&mut self.pending);
        match self.parse(&pending[..split]) {
            Ok(consumed) => self.pending = pending[consumed..].to_vec(),
            Err(e) => self.failure = Some(e),
        }
    }

    /// Parses what is left and commits everything as one write (inside a transaction block:
    /// checks it and defers it to COMMIT); returns the `COPY n` tag.
    pub async fn finish(mut self) -> SqlResult<CommandTag> {
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() && !self.ended {
            let consumed = self.parse(&rest)?;
            if consumed < rest.len() && !self.ended {
                return Err(SqlError::BadCopyFormat(format!(
                    "COPY into \"{}\": the data ends in the middle of row {}",
                    self.relation.qualified_name(),
                    self.rows + 1
                )));
            }
        }
        let written = RelationSink::write_or_defer(
            &self.relation,
            &self.engine,
            self.block.as_deref(),
            self.batches,
        )
        .await?;
        Ok(CommandTag {
            command: "COPY".into(),
            oid: None,
            rows: Some(written),
        })
    }

    /// Parses the complete records at the start of `data` into one batch; returns how many bytes
    /// were consumed (all of them but for a binary tuple cut off at the end).
    fn parse(&mut self, data: &[u8]) -> SqlResult<usize> {
        let mut columns: Vec<StringBuilder> =
            self.targets.iter().map(|_| StringBuilder::new()).collect();
        let first_row = self.rows;
        let (consumed, records) = match self.options.format {
            CopyFormat::Text => (data.len(), self.split_text(data, &mut columns, first_row)?),
            CopyFormat::Csv => (data.len(), self.split_csv(data, &mut columns, first_row)?),
            CopyFormat::Binary => {
                let types: Vec<&ColumnType> = self
                    .targets
                    .iter()
                    .map(|&i| &self.relation.columns[i].data_type)
                    .collect();
                let read = self.binary.read(data, &types, &mut columns, first_row)?;
                self.ended = self.binary.ended;
                read
            }
        };
        if records == 0 {
            return Ok(consumed);
        }
        let relation = &self.relation;
        let mut arrays: Vec<Option<ArrayRef>> = vec![None; relation.columns.len()];
        for (builder, &column_index) in columns.iter_mut().zip(&self.targets) {
            let text = builder.finish();
            let column = &relation.columns[column_index];
            let parsed = parse_text_column(&text, &column.data_type).map_err(|(row, value)| {
                SqlError::InvalidText(format!(
                    "invalid input syntax for type {}: \"{value}\" (COPY {}, row {}, column \"{}\")",
                    column.data_type.sql_name(),
                    relation.qualified_name(),
                    first_row + row + 1,
                    column.name
                ))
            })?;
            arrays[column_index] = Some(parsed);
        }
        let arrays: Vec<ArrayRef> = arrays
            .into_iter()
            .zip(&relation.columns)
            .map(|(array, column)| {
                array.unwrap_or_else(|| new_null_array(&arrow_type(&column.data_type), records))
            })
            .collect();
        // NOT NULL is checked when the batches are written, with the row named there.
        let schema = planning_schema(&relation.columns);
        let batch =
            RecordBatch::try_new(schema, arrays).map_err(|e| SqlError::Internal(e.to_string()))?;
        self.batches.push(batch);
        self.rows += records;
        Ok(consumed)
    }

    fn wrong_width(&self, row: usize, found: usize) -> SqlError {
        SqlError::BadCopyFormat(format!(
            "COPY into \"{}\": row {row} has {found} columns, expected {}",
            self.relation.qualified_name(),
            self.targets.len()
        ))
    }

    /// Splits text-format records (tab-separated, backslash escapes, `\N` for NULL).
    fn split_text(
        &mut self,
        data: &[u8],
        columns: &mut [StringBuilder],
        first_row: usize,
    ) -> SqlResult<usize> {
        let text = std::str::from_utf8(data)
            .map_err(|e| SqlError::InvalidText(format!("COPY data is not valid UTF-8: {e}")))?;
        if text.is_empty() {
            return Ok(0);
        }
        let delimiter = self.options.delimiter as char;
        let mut records = 0;
        for line in text.strip_suffix('\n').unwrap_or(text).split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line == "\\." {
                self.ended = true;
                break;
            }
            let mut width = 0;
            for (index, field) in line.split(delimiter).enumerate() {
                width = index + 1;
                let Some(builder) = columns.get_mut(index) else {
                    continue;
                };
                if field == self.options.null {
                    builder.append_null();
                } else {
                    builder.append_value(unescape_text(field));
                }
            }
            if width != columns.len() {
                return Err(self.wrong_width(first_row + records + 1, width));
            }
            records += 1;
        }
        Ok(records)
    }

    /// Splits CSV records; an empty unquoted field (the default NULL string) is NULL.
    fn split_csv(
        &mut self,
        data: &[u8],
        columns: &mut [StringBuilder],
        first_row: usize,
    ) -> SqlResult<usize> {
        let options = &self.options;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(self.header_pending)
            .delimiter(options.delimiter)
            .quote(options.quote)
            .escape((options.escape != options.quote).then_some(options.escape))
            .double_quote(options.escape == options.quote)
            .flexible(true)
            .from_reader(data);
        self.header_pending = false;
        let mut record = csv::StringRecord::new();
        let mut records = 0;
        loop {
            let more = reader.read_record(&mut record).map_err(|e| {
                SqlError::InvalidText(format!(
                    "COPY CSV data, row {}: {e}",
                    first_row + records + 1
                ))
            })?;
            if !more {
                break;
            }
            if record.len() == 1 && record.get(0) == Some("\\.") {
                self.ended = true;
                break;
            }
            if record.len() != columns.len() {
                return Err(self.wrong_width(first_row + records + 1, record.len()));
            }
            for (builder, field) in columns.iter_mut().zip(record.iter()) {
                if field == options.null {
                    builder.append_null();
                } else {
                    builder.append_value(field);
                }
            }
            records += 1;
        }
        Ok(records)
    }
}

/// The end of the last complete CSV record in `data`: just after the last newline that is not
/// inside a quoted field.
fn last_csv_record_end(data: &[u8], options: &CopyOptions) -> Option<usize> {
    let mut in_quotes = false;
    let mut last = None;
    let mut bytes = data.iter().enumerate();
    while let Some((index, &byte)) = bytes.next() {
        if in_quotes && options.escape != options.quote && byte == options.escape {
            bytes.next();
        } else if byte == options.quote {
            in_quotes = !in_quotes;
        } else if byte == b'\n' && !in_quotes {
            last = Some(index + 1);
        }
    }
    last
}

/// Undoes text-format backslash escapes.
fn unescape_text(field: &str) -> std::borrow::Cow<'_, str> {
    if !field.contains('\\') {
        return std::borrow::Cow::Borrowed(field);
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('v') => out.push('\u{b}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Parses values in PostgreSQL's text representation into an array of the column's type. On
/// failure returns the 0-based row and the offending text.
pub fn parse_text_column(
    values: &StringArray,
    data_type: &ColumnType,
) -> Result<ArrayRef, (usize, String)> {
    let bad = |row: usize| (row, values.value(row).to_string());
    match data_type {
        ColumnType::Text | ColumnType::Varchar(_) => Ok(Arc::new(values.clone())),
        ColumnType::Boolean => {
            let mut parsed = Vec::with_capacity(values.len());
            for (row, value) in values.iter().enumerate() {
                parsed.push(match value {
                    None => None,
                    Some(text) => Some(parse_bool(text).ok_or_else(|| bad(row))?),
                });
            }
            Ok(Arc::new(BooleanArray::from(parsed)))
        }
        ColumnType::Bytea => {
            let mut builder = BinaryBuilder::new();
            for (row, value) in values.iter().enumerate() {
                match value {
                    None => builder.append_null(),
                    Some(text) => builder.append_value(parse_bytea(text).ok_or_else(|| bad(row))?),
                }
            }
            Ok(Arc::new(builder.finish()))
        }
        ColumnType::Array(element) => parse_array_column(values, element),
        _ => {
            let target = arrow_type(data_type);
            let options = CastOptions {
                safe: true,
                ..Default::default()
            };
            let parsed =
                cast_with_options(values, &target, &options).map_err(|e| (0, e.to_string()))?;
            // A safe cast turns bad text into NULL: find the first such row to report it.
            if parsed.null_count() != values.null_count()
                && let Some(row) =
                    (0..values.len()).find(|&i| values.is_valid(i) && parsed.is_null(i))
            {
                return Err(bad(row));
            }
            Ok(parsed)
        }
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses `{1,2,NULL}` literals of a numeric element type.
fn parse_array_column(
    values: &StringArray,
    element: &ColumnType,
) -> Result<ArrayRef, (usize, String)> {
    fn build<T: datafusion::arrow::datatypes::ArrowPrimitiveType>(
        values: &StringArray,
    ) -> Result<ArrayRef, (usize, String)>
    where
        T::Native: std::str::FromStr,
    {
        let mut builder = ListBuilder::new(PrimitiveBuilder::<T>::new())
            .with_field(Arc::new(Field::new("element", T::DATA_TYPE, true)));
        for (row, value) in values.iter().enumerate() {
            let Some(text) = value else {
                builder.append_null();
                continue;
            };
            let bad = || (row, text.to_string());
            let inner = text
                .trim()
                .strip_prefix('{')
                .and_then(|t| t.strip_suffix('}'))
                .ok_or_else(bad)?;
            if !inner.trim().is_empty() {
                for item in inner.split(',') {
                    let item = item.trim();
                    if item.eq_ignore_ascii_case("null") {
                        builder.values().append_null();
                    } else {
                        builder
                            .values()
                            .append_value(item.parse::<T::Native>().map_err(|_| bad())?);
                    }
                }
            }
            builder.append(true);
        }
        Ok(Arc::new(builder.finish()))
    }
    match element {
        ColumnType::SmallInt => build::<Int16Type>(values),
        ColumnType::Integer => build::<Int32Type>(values),
        ColumnType::BigInt => build::<Int64Type>(values),
        ColumnType::Real => build::<Float32Type>(values),
        ColumnType::DoublePrecision => build::<Float64Type>(values),
        other => Err((0, format!("arrays of {}", other.sql_name()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_options() -> CopyOptions {
        CopyOptions {
            format: CopyFormat::Csv,
            header: false,
            delimiter: b',',
            null: String::new(),
            quote: b'"',
            escape: b'"',
        }
    }

    #[test]
    fn typed_parsing_reports_the_failing_row() {
        let values = StringArray::from(vec![Some("1"), Some("2"), Some("abc")]);
        assert_eq!(
            parse_text_column(&values, &ColumnType::BigInt).unwrap_err(),
            (2, "abc".into())
        );
        let arrays = StringArray::from(vec![Some("{1.5,2}"), None, Some("{}")]);
        let parsed =
            parse_text_column(&arrays, &ColumnType::Array(Box::new(ColumnType::Real))).unwrap();
        assert_eq!(parsed.len(), 3);
        assert!(parsed.is_null(1));
        let bad = StringArray::from(vec![Some("{1,x}")]);
        assert!(
            parse_text_column(&bad, &ColumnType::Array(Box::new(ColumnType::Integer))).is_err()
        );
    }

    #[test]
    fn csv_records_are_split_outside_quotes_only() {
        let data = b"1,\"two\nlines\"\n2,x\n3,\"open\n";
        assert_eq!(last_csv_record_end(data, &csv_options()), Some(18));
        assert_eq!(&data[..18], b"1,\"two\nlines\"\n2,x\n");
    }

    #[test]
    fn text_escapes_are_undone() {
        assert_eq!(unescape_text("a\\tb\\\\c\\n"), "a\tb\\c\n");
        assert!(matches!(
            unescape_text("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}

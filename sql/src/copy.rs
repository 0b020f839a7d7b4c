//! `COPY ... FROM STDIN` and `COPY ... TO STDOUT` in PostgreSQL's text and CSV formats.
//!
//! COPY FROM collects the whole stream, parses every value in PostgreSQL's text representation and
//! writes the rows through the same validation and single commit as INSERT: a bad row anywhere
//! (or a client that vanishes before CopyDone) writes nothing.

use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanArray, ListBuilder, PrimitiveBuilder, RecordBatch,
    StringArray, new_null_array,
};
use datafusion::arrow::compute::{CastOptions, cast, cast_with_options};
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::sql::sqlparser::ast::{CopyLegacyOption, CopyOption, CopySource, CopyTarget};
use futures::StreamExt;
use quiver_catalog::{ColumnType, Relation};

use crate::Engine;
use crate::error::{SqlError, SqlResult};
use crate::parser::{normalize_ident, object_name_to_string};
use crate::relation::RelationSink;
use crate::session::{CommandTag, Output, Session};
use crate::types::arrow_type;

/// The COPY data formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
}

/// The options of one COPY.
#[derive(Debug, Clone)]
struct CopyOptions {
    format: CopyFormat,
    header: bool,
    delimiter: u8,
    null: String,
    quote: u8,
    escape: u8,
}

impl CopyOptions {
    fn parse(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> SqlResult<CopyOptions> {
        let mut format = CopyFormat::Text;
        let mut header = false;
        let mut delimiter = None;
        let mut null = None;
        let mut quote = b'"';
        let mut escape = None;
        let single_byte = |what: &str, c: char| -> SqlResult<u8> {
            u8::try_from(c as u32)
                .ok()
                .filter(|b| b.is_ascii())
                .ok_or_else(|| {
                    SqlError::InvalidParameter(format!(
                        "COPY {what} must be a single one-byte character"
                    ))
                })
        };
        for option in options {
            match option {
                CopyOption::Format(ident) => {
                    format = match ident.value.to_lowercase().as_str() {
                        "text" => CopyFormat::Text,
                        "csv" => CopyFormat::Csv,
                        "binary" => {
                            return Err(SqlError::NotSupported(
                                "COPY FORMAT binary is not supported yet; use FORMAT csv or text"
                                    .into(),
                            ));
                        }
                        other => {
                            return Err(SqlError::InvalidParameter(format!(
                                "COPY format \"{other}\" not recognized"
                            )));
                        }
                    }
                }
                CopyOption::Header(h) => header = *h,
                CopyOption::Delimiter(c) => delimiter = Some(single_byte("delimiter", *c)?),
                CopyOption::Null(s) => null = Some(s.clone()),
                CopyOption::Quote(c) => quote = single_byte("quote", *c)?,
                CopyOption::Escape(c) => escape = Some(single_byte("escape", *c)?),
                other => {
                    return Err(SqlError::NotSupported(format!(
                        "COPY option {other} is not supported"
                    )));
                }
            }
        }
        for option in legacy {
            match option {
                CopyLegacyOption::Csv(_) => format = CopyFormat::Csv,
                CopyLegacyOption::Header => header = true,
                CopyLegacyOption::Delimiter(c) => delimiter = Some(single_byte("delimiter", *c)?),
                CopyLegacyOption::Null(s) => null = Some(s.clone()),
                CopyLegacyOption::Binary => {
                    return Err(SqlError::NotSupported(
                        "COPY BINARY is not supported yet; use FORMAT csv or text".into(),
                    ));
                }
                other => {
                    return Err(SqlError::NotSupported(format!(
                        "COPY option {other} is not supported"
                    )));
                }
            }
        }
        if header && format == CopyFormat::Text {
            return Err(SqlError::NotSupported(
                "COPY HEADER is available only in CSV mode".into(),
            ));
        }
        let (default_delimiter, default_null) = match format {
            CopyFormat::Text => (b'\t', "\\N"),
            CopyFormat::Csv => (b',', ""),
        };
        Ok(CopyOptions {
            format,
            header,
            delimiter: delimiter.unwrap_or(default_delimiter),
            null: null.unwrap_or_else(|| default_null.to_string()),
            quote,
            escape: escape.unwrap_or(quote),
        })
    }
}

/// A COPY FROM STDIN in progress: the target and the data received so far.
#[derive(Debug)]
pub struct CopyIn {
    engine: Arc<Engine>,
    relation: Relation,
    /// The relation's column index for each column of the COPY data, in data order.
    targets: Vec<usize>,
    options: CopyOptions,
    data: Vec<u8>,
}

impl CopyIn {
    /// How many columns the client sends per row.
    pub fn columns(&self) -> usize {
        self.targets.len()
    }

    /// Whether the data is in text (not binary) form.
    pub fn format(&self) -> CopyFormat {
        self.options.format
    }

    /// Adds a chunk of CopyData.
    pub fn receive(&mut self, chunk: &[u8]) {
        self.data.extend_from_slice(chunk);
    }

    /// Parses everything received and commits it as one write; returns the `COPY n` tag.
    pub async fn finish(self) -> SqlResult<CommandTag> {
        let rows = match self.options.format {
            CopyFormat::Text => split_text(&self.data, &self.options)?,
            CopyFormat::Csv => split_csv(&self.data, &self.options)?,
        };
        let relation = &self.relation;
        let mut columns: Vec<Option<ArrayRef>> = vec![None; relation.columns.len()];
        for (data_index, &column_index) in self.targets.iter().enumerate() {
            let mut values = Vec::with_capacity(rows.len());
            for (row_index, row) in rows.iter().enumerate() {
                if row.len() != self.targets.len() {
                    return Err(SqlError::Data(format!(
                        "COPY into \"{}\": row {} has {} columns, expected {}",
                        relation.qualified_name(),
                        row_index + 1,
                        row.len(),
                        self.targets.len()
                    )));
                }
                values.push(row[data_index].as_deref());
            }
            let column = &relation.columns[column_index];
            columns[column_index] = Some(parse_text_column(&values, &column.data_type).map_err(|(row, value)| {
                SqlError::InvalidText(format!(
                    "invalid input syntax for type {}: \"{value}\" (COPY {}, row {}, column \"{}\")",
                    column.data_type.sql_name(),
                    relation.qualified_name(),
                    row + 1,
                    column.name
                ))
            })?);
        }
        let arrays: Vec<ArrayRef> = columns
            .into_iter()
            .zip(&relation.columns)
            .map(|(array, column)| {
                array.unwrap_or_else(|| new_null_array(&arrow_type(&column.data_type), rows.len()))
            })
            .collect();
        let schema = crate::types::arrow_schema(&relation.columns);
        let nullable_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(nullable_schema, arrays)
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        let written =
            RelationSink::write_batches(relation, &self.engine.offline, vec![batch]).await?;
        Ok(CommandTag {
            command: "COPY".into(),
            oid: None,
            rows: Some(written),
        })
    }
}

/// Starts a COPY statement: FROM STDIN returns [`Output::CopyIn`], TO STDOUT streams the rows.
pub async fn start(
    session: &Session,
    source: &CopySource,
    to: bool,
    target: &CopyTarget,
    options: &[CopyOption],
    legacy_options: &[CopyLegacyOption],
) -> SqlResult<Output> {
    let options = CopyOptions::parse(options, legacy_options)?;
    if !to {
        if !matches!(target, CopyTarget::Stdin) {
            return Err(SqlError::NotSupported(
                "COPY FROM a file is not supported; use COPY ... FROM STDIN (psql's \\copy)".into(),
            ));
        }
        let CopySource::Table {
            table_name,
            columns,
        } = source
        else {
            return Err(SqlError::Syntax(
                "COPY FROM needs a table, not a query".into(),
            ));
        };
        let name = object_name_to_string(table_name);
        let snapshot = session.engine().catalog.snapshot();
        let relation = snapshot
            .resolve(session.project(), &name)
            .cloned()
            .ok_or_else(|| {
                SqlError::UndefinedTable(format!("relation \"{name}\" does not exist"))
            })?;
        let targets = if columns.is_empty() {
            (0..relation.columns.len()).collect()
        } else {
            let mut targets = Vec::with_capacity(columns.len());
            for ident in columns {
                let column = normalize_ident(ident);
                let index = relation
                    .columns
                    .iter()
                    .position(|c| c.name == column)
                    .ok_or_else(|| {
                        SqlError::UndefinedColumn(format!(
                            "column \"{column}\" of relation \"{}\" does not exist",
                            relation.qualified_name()
                        ))
                    })?;
                targets.push(index);
            }
            targets
        };
        return Ok(Output::CopyIn(CopyIn {
            engine: session.engine().clone(),
            relation,
            targets,
            options,
            data: Vec::new(),
        }));
    }
    if !matches!(target, CopyTarget::Stdout) {
        return Err(SqlError::NotSupported(
            "COPY TO a file is not supported; use COPY ... TO STDOUT (psql's \\copy)".into(),
        ));
    }
    let query = match source {
        CopySource::Table {
            table_name,
            columns,
        } => {
            let projection = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(|c| format!("\"{}\"", normalize_ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "SELECT {projection} FROM \"{}\"",
                object_name_to_string(table_name)
            )
        }
        CopySource::Query(query) => query.to_string(),
    };
    let statement = match crate::parser::parse(&query)?.into_iter().next() {
        Some(crate::parser::Statement::Sql(statement)) => *statement,
        _ => {
            return Err(SqlError::Syntax(format!(
                "COPY source is not a query: {query}"
            )));
        }
    };
    let stream = session.query_stream(statement).await?;
    let columns = stream.schema().fields().len();
    let header = options.header.then(|| {
        let names: Vec<String> = stream
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        encode_fields(names.iter().map(|n| Some(n.as_str())), &options)
    });
    let rows = stream.flat_map(move |batch| {
        let lines: Vec<SqlResult<Vec<u8>>> = match batch {
            Ok(batch) => match encode_batch(&batch, &options) {
                Ok(lines) => lines.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            },
            Err(e) => vec![Err(SqlError::from(e))],
        };
        futures::stream::iter(lines)
    });
    let lines = futures::stream::iter(header.into_iter().map(Ok))
        .chain(rows)
        .boxed();
    Ok(Output::CopyOut { columns, lines })
}

impl From<datafusion::sql::sqlparser::parser::ParserError> for SqlError {
    fn from(error: datafusion::sql::sqlparser::parser::ParserError) -> Self {
        SqlError::Syntax(
            error
                .to_string()
                .trim_start_matches("sql parser error: ")
                .to_string(),
        )
    }
}

/// Splits text-format COPY data into rows of fields, `None` for NULL.
fn split_text(data: &[u8], options: &CopyOptions) -> SqlResult<Vec<Vec<Option<String>>>> {
    let text = std::str::from_utf8(data)
        .map_err(|e| SqlError::InvalidText(format!("COPY data is not valid UTF-8: {e}")))?;
    let mut rows = Vec::new();
    let delimiter = options.delimiter as char;
    // The final newline ends the last row; it does not start another.
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() {
        return Ok(rows);
    }
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line == "\\." {
            break;
        }
        let fields = line
            .split(delimiter)
            .map(|field| {
                if field == options.null {
                    None
                } else {
                    Some(unescape_text(field))
                }
            })
            .collect();
        rows.push(fields);
    }
    Ok(rows)
}

/// Undoes text-format backslash escapes.
fn unescape_text(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
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
    out
}

/// Splits CSV-format COPY data into rows of fields, `None` for NULL.
fn split_csv(data: &[u8], options: &CopyOptions) -> SqlResult<Vec<Vec<Option<String>>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(options.header)
        .delimiter(options.delimiter)
        .quote(options.quote)
        .escape((options.escape != options.quote).then_some(options.escape))
        .double_quote(options.escape == options.quote)
        .flexible(true)
        .from_reader(data);
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record
            .map_err(|e| SqlError::InvalidText(format!("COPY CSV data, row {}: {e}", index + 1)))?;
        if record.len() == 1 && record.get(0) == Some("\\.") {
            break;
        }
        rows.push(
            record
                .iter()
                .map(|field| {
                    if field == options.null {
                        None
                    } else {
                        Some(field.to_string())
                    }
                })
                .collect(),
        );
    }
    Ok(rows)
}

/// Parses values in PostgreSQL's text representation into an array of the column's type. On
/// failure returns the 0-based row and the offending text.
pub fn parse_text_column(
    values: &[Option<&str>],
    data_type: &ColumnType,
) -> Result<ArrayRef, (usize, String)> {
    match data_type {
        ColumnType::Text | ColumnType::Varchar(_) => {
            Ok(Arc::new(StringArray::from(values.to_vec())))
        }
        ColumnType::Boolean => {
            let mut parsed = Vec::with_capacity(values.len());
            for (row, value) in values.iter().enumerate() {
                parsed.push(match value {
                    None => None,
                    Some(text) => Some(parse_bool(text).ok_or((row, text.to_string()))?),
                });
            }
            Ok(Arc::new(BooleanArray::from(parsed)))
        }
        ColumnType::Bytea => {
            let mut builder = BinaryBuilder::new();
            for (row, value) in values.iter().enumerate() {
                match value {
                    None => builder.append_null(),
                    Some(text) => {
                        builder.append_value(parse_bytea(text).ok_or((row, text.to_string()))?)
                    }
                }
            }
            Ok(Arc::new(builder.finish()))
        }
        ColumnType::Array(element) => parse_array_column(values, element),
        _ => {
            let strings = StringArray::from(values.to_vec());
            let target = arrow_type(data_type);
            let options = CastOptions {
                safe: true,
                ..Default::default()
            };
            let parsed =
                cast_with_options(&strings, &target, &options).map_err(|_| (0, String::new()))?;
            // A safe cast turns bad text into NULL: find the first such row to report it.
            if let Some(row) = (0..values.len()).find(|&i| values[i].is_some() && parsed.is_null(i))
            {
                return Err((row, values[row].unwrap_or_default().to_string()));
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
    values: &[Option<&str>],
    element: &ColumnType,
) -> Result<ArrayRef, (usize, String)> {
    fn build<T: datafusion::arrow::datatypes::ArrowPrimitiveType>(
        values: &[Option<&str>],
    ) -> Result<ArrayRef, (usize, String)>
    where
        T::Native: std::str::FromStr,
    {
        let mut builder = ListBuilder::new(PrimitiveBuilder::<T>::new()).with_field(Arc::new(
            datafusion::arrow::datatypes::Field::new("element", T::DATA_TYPE, true),
        ));
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

/// Encodes every row of a batch as one COPY line.
fn encode_batch(batch: &RecordBatch, options: &CopyOptions) -> SqlResult<Vec<Vec<u8>>> {
    let texts: Vec<Vec<Option<String>>> = batch
        .columns()
        .iter()
        .map(|column| format_column(column.as_ref()))
        .collect::<SqlResult<_>>()?;
    Ok((0..batch.num_rows())
        .map(|row| encode_fields(texts.iter().map(|column| column[row].as_deref()), options))
        .collect())
}

fn encode_fields<'a>(
    fields: impl Iterator<Item = Option<&'a str>>,
    options: &CopyOptions,
) -> Vec<u8> {
    let mut line = String::new();
    for (index, field) in fields.enumerate() {
        if index > 0 {
            line.push(options.delimiter as char);
        }
        match (field, options.format) {
            (None, _) => line.push_str(&options.null),
            (Some(text), CopyFormat::Text) => {
                for c in text.chars() {
                    match c {
                        '\\' => line.push_str("\\\\"),
                        '\n' => line.push_str("\\n"),
                        '\r' => line.push_str("\\r"),
                        '\t' => line.push_str("\\t"),
                        c if c == options.delimiter as char => {
                            line.push('\\');
                            line.push(c);
                        }
                        c => line.push(c),
                    }
                }
            }
            (Some(text), CopyFormat::Csv) => {
                let quote = options.quote as char;
                let needs_quotes = text.is_empty()
                    || text == options.null
                    || text.contains([options.delimiter as char, quote, '\n', '\r']);
                if needs_quotes {
                    line.push(quote);
                    for c in text.chars() {
                        if c == quote {
                            line.push(options.escape as char);
                        }
                        line.push(c);
                    }
                    line.push(quote);
                } else {
                    line.push_str(text);
                }
            }
        }
    }
    line.push('\n');
    line.into_bytes()
}

/// A float as PostgreSQL prints it: the shortest text that reads back exactly.
fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        value.to_string()
    }
}

/// Formats a column's values as PostgreSQL prints them in text form.
fn format_column(array: &dyn Array) -> SqlResult<Vec<Option<String>>> {
    let internal = |e: datafusion::arrow::error::ArrowError| SqlError::Internal(e.to_string());
    match array.data_type() {
        DataType::Boolean => {
            let values = array
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| SqlError::Internal("boolean column is not a BooleanArray".into()))?;
            Ok(values
                .iter()
                .map(|v| v.map(|b| if b { "t" } else { "f" }.to_string()))
                .collect())
        }
        DataType::List(_) | DataType::LargeList(_) => {
            let list = datafusion::arrow::array::as_list_array(array);
            (0..list.len())
                .map(|row| {
                    if list.is_null(row) {
                        return Ok(None);
                    }
                    let items = format_column(list.value(row).as_ref())?;
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|v| v.unwrap_or_else(|| "NULL".into()))
                        .collect();
                    Ok(Some(format!("{{{}}}", items.join(","))))
                })
                .collect()
        }
        DataType::Float32 | DataType::Float64 => {
            let values = cast(array, &DataType::Float64).map_err(internal)?;
            let values = values.as_primitive::<Float64Type>();
            Ok(values.iter().map(|v| v.map(format_float)).collect())
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let formatter =
                ArrayFormatter::try_new(array, &FormatOptions::default()).map_err(internal)?;
            Ok((0..array.len())
                .map(|row| (!array.is_null(row)).then(|| format!("\\x{}", formatter.value(row))))
                .collect())
        }
        _ => {
            let options = FormatOptions::default()
                .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
                .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f%:z"))
                .with_datetime_format(Some("%Y-%m-%d %H:%M:%S%.f"));
            let formatter = ArrayFormatter::try_new(array, &options).map_err(internal)?;
            Ok((0..array.len())
                .map(|row| (!array.is_null(row)).then(|| formatter.value(row).to_string()))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::ast;

    fn text_options() -> CopyOptions {
        CopyOptions::parse(&[], &[]).unwrap()
    }

    #[test]
    fn text_format_splits_unescapes_and_reads_nulls() {
        let rows = split_text(b"1\ta\\tb\t\\N\n2\tc\\\\d\tx\n\\.\n", &text_options()).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some("1".into()), Some("a\tb".into()), None],
                vec![Some("2".into()), Some("c\\d".into()), Some("x".into())],
            ]
        );
    }

    #[test]
    fn typed_parsing_reports_the_failing_row() {
        let values = [Some("1"), Some("2"), Some("abc")];
        assert_eq!(
            parse_text_column(&values, &ColumnType::BigInt).unwrap_err(),
            (2, "abc".into())
        );
        let arrays = [Some("{1.5,2}"), None, Some("{}")];
        let parsed =
            parse_text_column(&arrays, &ColumnType::Array(Box::new(ColumnType::Real))).unwrap();
        assert_eq!(
            format_column(parsed.as_ref()).unwrap(),
            vec![Some("{1.5,2}".into()), None, Some("{}".into())]
        );
        assert!(
            parse_text_column(
                &[Some("{1,x}")],
                &ColumnType::Array(Box::new(ColumnType::Integer))
            )
            .is_err()
        );
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let options =
            CopyOptions::parse(&[CopyOption::Format(ast::Ident::new("csv"))], &[]).unwrap();
        let line = encode_fields(
            [Some("a,b"), None, Some(""), Some("say \"hi\"")].into_iter(),
            &options,
        );
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "\"a,b\",,\"\",\"say \"\"hi\"\"\"\n"
        );
    }
}

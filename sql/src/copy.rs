//! `COPY ... FROM STDIN` and `COPY ... TO STDOUT` in PostgreSQL's text and CSV formats.
//!
//! COPY FROM collects the whole stream, parses every value in PostgreSQL's text representation and
//! writes the rows through the same validation and single commit as INSERT: a bad row anywhere
//! (or a client that vanishes before CopyDone) writes nothing.

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::sql::sqlparser::ast::{CopyLegacyOption, CopyOption, CopySource, CopyTarget};
use futures::StreamExt;

use crate::binary_copy;
use crate::copy_in::CopyIn;
use crate::error::{SqlError, SqlResult};
use crate::parser::{normalize_ident, object_name_to_string};
use crate::project_catalog::PUBLIC_SCHEMA;
use crate::session::{Output, Session};

/// The COPY data formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    /// PostgreSQL's binary COPY format (`PGCOPY` signature, length-prefixed binary values).
    Binary,
}

/// The options of one COPY.
#[derive(Debug, Clone)]
pub(crate) struct CopyOptions {
    pub(crate) format: CopyFormat,
    pub(crate) header: bool,
    pub(crate) delimiter: u8,
    pub(crate) null: String,
    pub(crate) quote: u8,
    pub(crate) escape: u8,
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
                        "binary" => CopyFormat::Binary,
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
                CopyLegacyOption::Binary => format = CopyFormat::Binary,
                other => {
                    return Err(SqlError::NotSupported(format!(
                        "COPY option {other} is not supported"
                    )));
                }
            }
        }
        if header && format != CopyFormat::Csv {
            return Err(SqlError::NotSupported(
                "COPY HEADER is available only in CSV mode".into(),
            ));
        }
        let (default_delimiter, default_null) = match format {
            CopyFormat::Text | CopyFormat::Binary => (b'\t', "\\N"),
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
        if let [schema, _] = table_name.0.as_slice() {
            let schema = schema.as_ident().map(normalize_ident).unwrap_or_default();
            if schema != PUBLIC_SCHEMA {
                let shared = snapshot
                    .shared_with(session.project())
                    .any(|(owner, _)| owner == schema);
                return Err(if shared {
                    crate::access::shared_read_only(&schema, &name)
                } else {
                    SqlError::NotSupported(format!(
                        "COPY FROM STDIN writes feature groups and tables of schema public, not \"{schema}.{name}\""
                    ))
                });
            }
        }
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
        return Ok(Output::CopyIn(Box::new(CopyIn::new(
            session.engine().clone(),
            relation,
            targets,
            options,
            session.open_block_writes(),
        ))));
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
    // pgwire counts every CopyData message but the binary trailer as a row, so the CSV header
    // and the binary signature travel in the first row's message.
    let prefix = match options.format {
        CopyFormat::Binary => Some(binary_copy::SIGNATURE_AND_HEADER.to_vec()),
        _ if options.header => {
            let names: Vec<String> = stream
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            Some(encode_fields(
                names.iter().map(|n| Some(n.as_str())),
                &options,
            ))
        }
        _ => None,
    };
    let format = options.format;
    let rows = stream.flat_map(move |batch| {
        let lines: Vec<SqlResult<Vec<u8>>> = match batch {
            Ok(batch) => {
                let encoded = match format {
                    CopyFormat::Binary => binary_copy::encode_batch(&batch),
                    _ => encode_batch(&batch, &options),
                };
                match encoded {
                    Ok(lines) => lines.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                }
            }
            Err(e) => vec![Err(SqlError::from(e))],
        };
        futures::stream::iter(lines)
    });
    // The binary trailer is appended by the protocol layer (pgwire's CopyResponse).
    let lines = prefix_first(rows, prefix);
    Ok(Output::CopyOut {
        columns,
        format,
        lines,
    })
}

/// Puts `prefix` in front of the first item, or emits it alone if there is none.
fn prefix_first(
    rows: impl futures::Stream<Item = SqlResult<Vec<u8>>> + Send + 'static,
    prefix: Option<Vec<u8>>,
) -> futures::stream::BoxStream<'static, SqlResult<Vec<u8>>> {
    futures::stream::unfold((rows.boxed(), prefix), |(mut rows, prefix)| async move {
        match (rows.next().await, prefix) {
            (Some(Ok(mut line)), Some(mut prefix)) => {
                prefix.append(&mut line);
                Some((Ok(prefix), (rows, None)))
            }
            (None, Some(prefix)) => Some((Ok(prefix), (rows, None))),
            (Some(item), None) | (Some(item @ Err(_)), Some(_)) => Some((item, (rows, None))),
            (None, None) => None,
        }
    })
    .boxed()
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
            (Some(text), CopyFormat::Text | CopyFormat::Binary) => {
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

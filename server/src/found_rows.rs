//! A key lookup's rows encoded from their stored values straight into DataRow messages, without
//! Arrow arrays in between: bench/online_lookup measured making 50 one-value arrays for a row and
//! encoding them through arrow-pg as a fifth of a lookup's CPU.
//!
//! Both paths send the same bytes: each value goes through pgwire's `ToSql` / `ToSqlText` for
//! the field's type and format, as arrow-pg passes it. Columns of other types than the plain
//! ones below, and rows the online store holds in its older format, take arrow-pg's path as
//! every other result does.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field};
use pgwire::api::results::{DataRowEncoder, FieldInfo};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use pgwire::types::ToSqlText;
use postgres_types::ToSql;
use quiver_sql::{FoundRows, SqlError};
use quiver_storage::StoredValue;

use crate::errors::to_pgwire;

/// Whether [`data_rows`] encodes these rows: every column of a plain type, every row in the
/// current format.
pub fn encodable(found: &FoundRows) -> bool {
    let stored = found.stored();
    stored.readable_by_value()
        && found.schema().fields().iter().all(|f| plain(f))
        && found
            .projection()
            .iter()
            .all(|&column| plain(stored.schema().field(column)))
}

/// A type whose stored value maps to one Rust value that pgwire encodes as arrow-pg would: no
/// field metadata (arrow-pg encodes some tagged columns its own way).
fn plain(field: &Field) -> bool {
    field.metadata().is_empty()
        && matches!(
            field.data_type(),
            DataType::Boolean
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::Float32
                | DataType::Float64
                | DataType::Utf8
                | DataType::LargeUtf8
        )
}

/// The rows as DataRow messages in `fields`' types and formats (the rows must be
/// [`encodable`]).
pub fn data_rows(found: &FoundRows, fields: &Arc<Vec<FieldInfo>>) -> PgWireResult<Vec<DataRow>> {
    let stored = found.stored();
    let schema = stored.schema();
    let mut encoder = DataRowEncoder::new(fields.clone());
    let mut values = Vec::with_capacity(schema.fields().len());
    let mut rows = Vec::with_capacity(stored.num_rows());
    for row in 0..stored.num_rows() {
        stored
            .read_row(row, &mut values)
            .map_err(|e| to_pgwire(e.into()))?;
        for (field, &column) in fields.iter().zip(found.projection()) {
            encode(
                &mut encoder,
                field,
                schema.field(column).data_type(),
                values[column],
            )?;
        }
        rows.push(encoder.take_row());
    }
    Ok(rows)
}

fn encode(
    encoder: &mut DataRowEncoder,
    field: &FieldInfo,
    data_type: &DataType,
    value: Option<StoredValue<'_>>,
) -> PgWireResult<()> {
    let Some(value) = value else {
        return put(encoder, field, &None::<i8>);
    };
    match (data_type, value) {
        (DataType::Boolean, StoredValue::Boolean(v)) => put(encoder, field, &v),
        (DataType::Int16, StoredValue::Fixed(bytes)) => {
            put(encoder, field, &i16::from_le_bytes(fixed(bytes)?))
        }
        (DataType::Int32, StoredValue::Fixed(bytes)) => {
            put(encoder, field, &i32::from_le_bytes(fixed(bytes)?))
        }
        (DataType::Int64, StoredValue::Fixed(bytes)) => {
            put(encoder, field, &i64::from_le_bytes(fixed(bytes)?))
        }
        (DataType::Float32, StoredValue::Fixed(bytes)) => {
            put(encoder, field, &f32::from_le_bytes(fixed(bytes)?))
        }
        (DataType::Float64, StoredValue::Fixed(bytes)) => {
            put(encoder, field, &f64::from_le_bytes(fixed(bytes)?))
        }
        (DataType::Utf8 | DataType::LargeUtf8, StoredValue::Bytes(bytes)) => {
            let text = std::str::from_utf8(bytes).map_err(|_| corrupt("text that is not UTF-8"))?;
            put(encoder, field, &text)
        }
        (data_type, value) => Err(corrupt(&format!(
            "{value:?} in a column of type {data_type}"
        ))),
    }
}

/// One value in the field's type and format, as arrow-pg's encoder writes it.
fn put<T: ToSql + ToSqlText>(
    encoder: &mut DataRowEncoder,
    field: &FieldInfo,
    value: &T,
) -> PgWireResult<()> {
    encoder.encode_field_with_type_and_format(
        value,
        field.datatype(),
        field.format(),
        field.format_options(),
    )
}

fn fixed<const N: usize>(bytes: &[u8]) -> PgWireResult<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| corrupt(&format!("a {}-byte value for {N} bytes", bytes.len())))
}

fn corrupt(what: &str) -> pgwire::error::PgWireError {
    to_pgwire(SqlError::Internal(format!(
        "online store: a stored row holds {what}"
    )))
}

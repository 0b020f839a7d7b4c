//! PostgreSQL's binary COPY format: the `PGCOPY` signature, then per row a field count and
//! length-prefixed values in each type's binary send format, then a `-1` trailer.
//!
//! Values are encoded and decoded with postgres-types. Decoded values are handed on in PostgreSQL's
//! text form, so that binary COPY goes through the same typed parsing and validation as text and
//! CSV (`copy_in::parse_text_column`).

use bytes::BytesMut;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::{Array, RecordBatch, StringBuilder};
use datafusion::common::ScalarValue;
use postgres_types::{FromSql, IsNull, ToSql, Type};
use quiver_catalog::ColumnType;

use crate::error::{SqlError, SqlResult};

/// The 11-byte signature, a zero flags field and a zero-length header extension.
pub const SIGNATURE_AND_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The binary type a column is sent as.
fn wire_type(column_type: &ColumnType) -> Type {
    match column_type {
        ColumnType::Boolean => Type::BOOL,
        ColumnType::SmallInt => Type::INT2,
        ColumnType::Integer => Type::INT4,
        ColumnType::BigInt => Type::INT8,
        ColumnType::Real => Type::FLOAT4,
        ColumnType::DoublePrecision => Type::FLOAT8,
        ColumnType::Text => Type::TEXT,
        ColumnType::Varchar(_) => Type::VARCHAR,
        ColumnType::Bytea => Type::BYTEA,
        ColumnType::Date => Type::DATE,
        ColumnType::Timestamp => Type::TIMESTAMP,
        ColumnType::TimestampTz => Type::TIMESTAMPTZ,
        ColumnType::Array(element) => match element.as_ref() {
            ColumnType::SmallInt => Type::INT2_ARRAY,
            ColumnType::Integer => Type::INT4_ARRAY,
            ColumnType::BigInt => Type::INT8_ARRAY,
            ColumnType::Real => Type::FLOAT4_ARRAY,
            _ => Type::FLOAT8_ARRAY,
        },
    }
}

/// Reads binary COPY data into text columns.
#[derive(Debug, Default)]
pub struct BinaryReader {
    header_read: bool,
    /// The trailer was read: the data is complete.
    pub ended: bool,
}

impl BinaryReader {
    /// Decodes every complete tuple at the start of `data` into `columns` (one builder per COPY
    /// column, of the given types). Returns how many bytes and tuples were consumed; an incomplete
    /// tuple at the end is left for the next call.
    pub fn read(
        &mut self,
        data: &[u8],
        types: &[&ColumnType],
        columns: &mut [StringBuilder],
        first_row: usize,
    ) -> SqlResult<(usize, usize)> {
        let mut position = 0;
        if !self.header_read {
            if data.len() < SIGNATURE.len() + 8 {
                return Ok((0, 0));
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                return Err(SqlError::BadCopyFormat(
                    "COPY file signature not recognized".into(),
                ));
            }
            let extension = read_i32(data, SIGNATURE.len() + 4).unwrap_or(0).max(0) as usize;
            position = SIGNATURE.len() + 8 + extension;
            if data.len() < position {
                return Ok((0, 0));
            }
            self.header_read = true;
        }
        let mut tuples = 0;
        let mut fields: Vec<Option<String>> = Vec::with_capacity(columns.len());
        while !self.ended {
            let start = position;
            let Some(count) = read_i16(data, position) else {
                break;
            };
            position += 2;
            if count == -1 {
                self.ended = true;
                break;
            }
            let row = first_row + tuples + 1;
            if count as usize != columns.len() {
                return Err(SqlError::BadCopyFormat(format!(
                    "binary COPY row {row} has {count} fields, expected {}",
                    columns.len()
                )));
            }
            fields.clear();
            let mut complete = true;
            for column_type in types {
                let Some(length) = read_i32(data, position) else {
                    complete = false;
                    break;
                };
                position += 4;
                if length < 0 {
                    fields.push(None);
                    continue;
                }
                let end = position + length as usize;
                if end > data.len() {
                    complete = false;
                    break;
                }
                let text = decode_text(&data[position..end], column_type).map_err(|e| {
                    SqlError::InvalidText(format!(
                        "invalid binary value for type {} in binary COPY row {row}: {e}",
                        column_type.sql_name()
                    ))
                })?;
                fields.push(Some(text));
                position = end;
            }
            if !complete {
                return Ok((start, tuples));
            }
            for (builder, field) in columns.iter_mut().zip(&fields) {
                builder.append_option(field.as_deref());
            }
            tuples += 1;
        }
        Ok((position, tuples))
    }
}

fn read_i16(data: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn read_i32(data: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

type DecodeError = Box<dyn std::error::Error + Sync + Send>;

/// One binary value as PostgreSQL's text form of it.
fn decode_text(raw: &[u8], column_type: &ColumnType) -> Result<String, DecodeError> {
    let ty = wire_type(column_type);
    fn array<'a, T: FromSql<'a> + ToString>(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<String, DecodeError> {
        let items: Vec<Option<T>> = FromSql::from_sql(ty, raw)?;
        let items: Vec<String> = items
            .into_iter()
            .map(|v| v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into()))
            .collect();
        Ok(format!("{{{}}}", items.join(",")))
    }
    Ok(match column_type {
        ColumnType::Boolean => if bool::from_sql(&ty, raw)? { "t" } else { "f" }.to_string(),
        ColumnType::SmallInt => i16::from_sql(&ty, raw)?.to_string(),
        ColumnType::Integer => i32::from_sql(&ty, raw)?.to_string(),
        ColumnType::BigInt => i64::from_sql(&ty, raw)?.to_string(),
        ColumnType::Real => f32::from_sql(&ty, raw)?.to_string(),
        ColumnType::DoublePrecision => f64::from_sql(&ty, raw)?.to_string(),
        ColumnType::Text | ColumnType::Varchar(_) => String::from_sql(&ty, raw)?,
        ColumnType::Bytea => {
            let bytes = <Vec<u8>>::from_sql(&ty, raw)?;
            let mut text = String::with_capacity(2 + bytes.len() * 2);
            text.push_str("\\x");
            for byte in bytes {
                text.push_str(&format!("{byte:02x}"));
            }
            text
        }
        ColumnType::Date => NaiveDate::from_sql(&ty, raw)?
            .format("%Y-%m-%d")
            .to_string(),
        ColumnType::Timestamp => NaiveDateTime::from_sql(&ty, raw)?
            .format("%Y-%m-%d %H:%M:%S%.6f")
            .to_string(),
        ColumnType::TimestampTz => DateTime::<Utc>::from_sql(&ty, raw)?
            .format("%Y-%m-%d %H:%M:%S%.6f+00:00")
            .to_string(),
        ColumnType::Array(element) => match element.as_ref() {
            ColumnType::SmallInt => array::<i16>(&ty, raw)?,
            ColumnType::Integer => array::<i32>(&ty, raw)?,
            ColumnType::BigInt => array::<i64>(&ty, raw)?,
            ColumnType::Real => array::<f32>(&ty, raw)?,
            _ => array::<f64>(&ty, raw)?,
        },
    })
}

/// Encodes every row of a batch as one binary COPY tuple.
pub fn encode_batch(batch: &RecordBatch) -> SqlResult<Vec<Vec<u8>>> {
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut tuple = BytesMut::new();
        tuple.extend_from_slice(&(batch.num_columns() as i16).to_be_bytes());
        for (column, field) in batch.columns().iter().zip(batch.schema().fields()) {
            encode_value(column.as_ref(), row, &mut tuple).map_err(|e| {
                SqlError::NotSupported(format!(
                    "binary COPY of column \"{}\" ({}): {e}",
                    field.name(),
                    field.data_type()
                ))
            })?;
        }
        rows.push(tuple.to_vec());
    }
    Ok(rows)
}

/// Appends one length-prefixed value.
fn encode_value(array: &dyn Array, row: usize, out: &mut BytesMut) -> Result<(), DecodeError> {
    let length_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let scalar = ScalarValue::try_from_array(array, row)?;
    let is_null = match &scalar {
        _ if scalar.is_null() => IsNull::Yes,
        ScalarValue::Boolean(Some(v)) => v.to_sql(&Type::BOOL, out)?,
        ScalarValue::Int16(Some(v)) => v.to_sql(&Type::INT2, out)?,
        ScalarValue::Int32(Some(v)) => v.to_sql(&Type::INT4, out)?,
        ScalarValue::Int64(Some(v)) => v.to_sql(&Type::INT8, out)?,
        ScalarValue::Float32(Some(v)) => v.to_sql(&Type::FLOAT4, out)?,
        ScalarValue::Float64(Some(v)) => v.to_sql(&Type::FLOAT8, out)?,
        ScalarValue::Utf8(Some(v))
        | ScalarValue::LargeUtf8(Some(v))
        | ScalarValue::Utf8View(Some(v)) => v.as_str().to_sql(&Type::TEXT, out)?,
        ScalarValue::Binary(Some(v))
        | ScalarValue::LargeBinary(Some(v))
        | ScalarValue::BinaryView(Some(v)) => v.as_slice().to_sql(&Type::BYTEA, out)?,
        ScalarValue::Date32(Some(days)) => {
            let date =
                NaiveDate::from_num_days_from_ce_opt(*days + 719_163).ok_or("date out of range")?;
            date.to_sql(&Type::DATE, out)?
        }
        ScalarValue::TimestampMicrosecond(Some(micros), zone) => {
            let at =
                DateTime::<Utc>::from_timestamp_micros(*micros).ok_or("timestamp out of range")?;
            match zone {
                Some(_) => at.to_sql(&Type::TIMESTAMPTZ, out)?,
                None => at.naive_utc().to_sql(&Type::TIMESTAMP, out)?,
            }
        }
        ScalarValue::List(list) => {
            let values = list.value(0);
            let items = (0..values.len())
                .map(|i| ScalarValue::try_from_array(values.as_ref(), i))
                .collect::<Result<Vec<_>, _>>()?;
            encode_list(list.value_type(), &items, out)?
        }
        other => {
            return Err(format!("type {} has no binary COPY encoding", other.data_type()).into());
        }
    };
    let length: i32 = match is_null {
        IsNull::Yes => {
            out.truncate(length_at + 4);
            -1
        }
        IsNull::No => (out.len() - length_at - 4) as i32,
    };
    out[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

fn encode_list(
    element: datafusion::arrow::datatypes::DataType,
    items: &[ScalarValue],
    out: &mut BytesMut,
) -> Result<IsNull, DecodeError> {
    use datafusion::arrow::datatypes::DataType;
    macro_rules! list {
        ($variant:ident, $ty:expr) => {{
            let values: Vec<Option<_>> = items
                .iter()
                .map(|item| match item {
                    ScalarValue::$variant(v) => Ok(*v),
                    other => Err(format!("mixed array element {}", other.data_type())),
                })
                .collect::<Result<_, _>>()?;
            values.to_sql(&$ty, out)
        }};
    }
    match element {
        DataType::Float64 => list!(Float64, Type::FLOAT8_ARRAY),
        DataType::Float32 => list!(Float32, Type::FLOAT4_ARRAY),
        DataType::Int64 => list!(Int64, Type::INT8_ARRAY),
        DataType::Int32 => list!(Int32, Type::INT4_ARRAY),
        DataType::Int16 => list!(Int16, Type::INT2_ARRAY),
        other => Err(format!("arrays of {other} have no binary COPY encoding").into()),
    }
}

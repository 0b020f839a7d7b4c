//! The mapping between SQL types as written, the catalog's column types and Arrow types.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::sql::sqlparser::ast::{
    ArrayElemTypeDef, CharacterLength, DataType as SqlType, TimezoneInfo,
};
use quiver_catalog::{Column, ColumnType};

use crate::error::{SqlError, SqlResult};

/// The time zone Quiver stores TIMESTAMPTZ values in.
pub const UTC: &str = "UTC";

/// The catalog type for a SQL type as written in a column definition.
pub fn column_type(sql_type: &SqlType, column: &str) -> SqlResult<ColumnType> {
    let unsupported = || {
        SqlError::NotSupported(format!(
            "column \"{column}\": type {sql_type} is not supported; use BOOLEAN, SMALLINT, INTEGER, BIGINT, \
             REAL, DOUBLE PRECISION, TEXT, VARCHAR, BYTEA, DATE, TIMESTAMP, TIMESTAMPTZ or an array of a numeric type"
        ))
    };
    Ok(match sql_type {
        SqlType::Boolean | SqlType::Bool => ColumnType::Boolean,
        SqlType::SmallInt(_) | SqlType::Int2(_) => ColumnType::SmallInt,
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => ColumnType::Integer,
        SqlType::BigInt(_) | SqlType::Int8(_) => ColumnType::BigInt,
        SqlType::Real | SqlType::Float4 => ColumnType::Real,
        SqlType::DoublePrecision | SqlType::Float8 | SqlType::Double(_) | SqlType::Float(_) => {
            ColumnType::DoublePrecision
        }
        SqlType::Text | SqlType::String(None) => ColumnType::Text,
        SqlType::Varchar(length) | SqlType::CharacterVarying(length) => match length {
            None => ColumnType::Varchar(None),
            Some(CharacterLength::IntegerLength { length, .. }) => {
                let length = u32::try_from(*length).map_err(|_| unsupported())?;
                ColumnType::Varchar(Some(length))
            }
            Some(CharacterLength::Max) => return Err(unsupported()),
        },
        SqlType::Bytea => ColumnType::Bytea,
        SqlType::Date => ColumnType::Date,
        SqlType::Timestamp(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
            ColumnType::Timestamp
        }
        SqlType::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => {
            ColumnType::TimestampTz
        }
        SqlType::Array(
            ArrayElemTypeDef::SquareBracket(element, _)
            | ArrayElemTypeDef::AngleBracket(element)
            | ArrayElemTypeDef::Parenthesis(element),
        ) => {
            let element = column_type(element, column)?;
            if !element.is_numeric() {
                return Err(SqlError::NotSupported(format!(
                    "column \"{column}\": arrays of {} are not supported; arrays hold a numeric type",
                    element.sql_name()
                )));
            }
            ColumnType::Array(Box::new(element))
        }
        _ => return Err(unsupported()),
    })
}

/// The Arrow type values of a column type are stored and computed as.
pub fn arrow_type(column_type: &ColumnType) -> DataType {
    match column_type {
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::SmallInt => DataType::Int16,
        ColumnType::Integer => DataType::Int32,
        ColumnType::BigInt => DataType::Int64,
        ColumnType::Real => DataType::Float32,
        ColumnType::DoublePrecision => DataType::Float64,
        ColumnType::Text | ColumnType::Varchar(_) => DataType::Utf8,
        ColumnType::Bytea => DataType::Binary,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        ColumnType::Array(element) => {
            DataType::List(Arc::new(Field::new("element", arrow_type(element), true)))
        }
    }
}

/// The Arrow schema of a relation's columns.
pub fn arrow_schema(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(&c.data_type), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// The schema queries and writes are planned with: the relation's columns, all nullable, so that
/// NULLs in NOT NULL columns reach Quiver's validation, which names the row and the column.
pub fn planning_schema(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(&c.data_type), true))
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn parse_type(sql: &str) -> SqlType {
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql(sql)
            .unwrap()
            .parse_data_type()
            .unwrap()
    }

    #[test]
    fn spec_types_map_to_catalog_types() {
        let cases = [
            ("BOOLEAN", ColumnType::Boolean),
            ("int2", ColumnType::SmallInt),
            ("INTEGER", ColumnType::Integer),
            ("BIGINT", ColumnType::BigInt),
            ("REAL", ColumnType::Real),
            ("DOUBLE PRECISION", ColumnType::DoublePrecision),
            ("TEXT", ColumnType::Text),
            ("VARCHAR(12)", ColumnType::Varchar(Some(12))),
            ("BYTEA", ColumnType::Bytea),
            ("DATE", ColumnType::Date),
            ("TIMESTAMP", ColumnType::Timestamp),
            ("TIMESTAMPTZ", ColumnType::TimestampTz),
            ("TIMESTAMP WITH TIME ZONE", ColumnType::TimestampTz),
            ("REAL[]", ColumnType::Array(Box::new(ColumnType::Real))),
        ];
        for (sql, expected) in cases {
            assert_eq!(
                column_type(&parse_type(sql), "c").unwrap(),
                expected,
                "{sql}"
            );
        }
    }

    #[test]
    fn unsupported_types_are_0a000_errors() {
        for sql in ["NUMERIC(10,2)", "TEXT[]", "JSON", "INTERVAL"] {
            assert!(
                matches!(
                    column_type(&parse_type(sql), "c"),
                    Err(SqlError::NotSupported(_))
                ),
                "{sql}"
            );
        }
    }
}

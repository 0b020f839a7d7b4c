//! Event-time partitioning: `partition_by = 'day(ts)'` (or `month(...)`, `year(...)`).
//!
//! A partitioned feature group's offline table has one more column, [`PARTITION_COLUMN`], holding
//! the event time truncated to the granularity; it is a Delta partition column, so each partition
//! is its own directory. Users never see it: scans project the catalog's columns by name. A filter
//! on the event time is also turned into a filter on the partition column, which lets the scan skip
//! whole partitions (`ts >= X` implies `partition >= trunc(X)`, and so on).

use std::sync::Arc;

use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{ArrayRef, AsArray, Date32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Date32Type, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, col, lit};
use quiver_catalog::{ColumnType, Relation};
use quiver_storage::SEQUENCE_COLUMN;

use crate::error::{SqlError, SqlResult};
use crate::types::arrow_schema;

/// The hidden partition column of a partitioned offline table.
pub const PARTITION_COLUMN: &str = "__quiver_partition";

/// Days from 0001-01-01 (chrono's day 1 of the common era) to 1970-01-01 (Arrow's Date32 zero).
const UNIX_EPOCH_FROM_CE: i32 = 719_163;

/// How finely the event time is cut into partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Day,
    Month,
    Year,
}

/// The partitioning of one feature group version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitioning {
    /// The event time column the partitions are cut from.
    pub column: String,
    pub granularity: Granularity,
}

impl Partitioning {
    /// Parses `day(ts)`, `month(ts)` or `year(ts)`; the column must be the event time, of a date or
    /// timestamp type.
    pub fn parse(
        spec: &str,
        event_time: Option<&str>,
        columns: &[quiver_catalog::Column],
    ) -> SqlResult<Self> {
        let invalid = |why: &str| {
            SqlError::InvalidParameter(format!(
                "partition_by '{spec}': {why}; write day(<event time>), month(<event time>) or year(<event time>)"
            ))
        };
        let spec_trimmed = spec.trim();
        let (function, rest) = spec_trimmed
            .split_once('(')
            .ok_or_else(|| invalid("not of the form unit(column)"))?;
        let column = rest
            .strip_suffix(')')
            .ok_or_else(|| invalid("missing the closing parenthesis"))?
            .trim()
            .to_lowercase();
        let granularity = match function.trim().to_lowercase().as_str() {
            "day" => Granularity::Day,
            "month" => Granularity::Month,
            "year" => Granularity::Year,
            _ => return Err(invalid("the unit must be day, month or year")),
        };
        if event_time != Some(column.as_str()) {
            return Err(invalid("partitions are cut from the EVENT TIME column"));
        }
        let data_type = columns
            .iter()
            .find(|c| c.name == column)
            .map(|c| &c.data_type);
        if !matches!(
            data_type,
            Some(ColumnType::Date | ColumnType::Timestamp | ColumnType::TimestampTz)
        ) {
            return Err(invalid(
                "the event time must be a DATE, TIMESTAMP or TIMESTAMPTZ",
            ));
        }
        Ok(Partitioning {
            column,
            granularity,
        })
    }

    /// The partitioning of a relation, if it has one.
    pub fn of(relation: &Relation) -> Option<Partitioning> {
        let spec = relation.feature_group()?;
        let text = spec.options.partition_by.as_deref()?;
        Partitioning::parse(text, spec.event_time.as_deref(), &relation.columns).ok()
    }

    /// The partition values of an event-time array.
    pub fn partition_values(&self, event_time: &ArrayRef) -> SqlResult<ArrayRef> {
        let days =
            cast(event_time, &DataType::Date32).map_err(|e| SqlError::Internal(e.to_string()))?;
        let days = days.as_primitive::<Date32Type>();
        let truncated: Date32Array = days.iter().map(|d| d.map(|d| self.truncate(d))).collect();
        Ok(Arc::new(truncated))
    }

    /// Truncates a Date32 day number to the start of its partition.
    fn truncate(&self, days: i32) -> i32 {
        let Some(date) = NaiveDate::from_num_days_from_ce_opt(days + UNIX_EPOCH_FROM_CE) else {
            return days;
        };
        let start = match self.granularity {
            Granularity::Day => Some(date),
            Granularity::Month => date.with_day(1),
            Granularity::Year => date.with_day(1).and_then(|d| d.with_month(1)),
        };
        start
            .map(|d| d.num_days_from_ce() - UNIX_EPOCH_FROM_CE)
            .unwrap_or(days)
    }

    /// A filter on the partition column implied by a filter on the event time, if there is one.
    pub fn derived_filter(&self, filter: &Expr) -> Option<Expr> {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = filter else {
            return None;
        };
        let (op, value) = match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(value, _)) if c.name == self.column => (*op, value),
            (Expr::Literal(value, _), Expr::Column(c)) if c.name == self.column => {
                (op.swap()?, value)
            }
            _ => return None,
        };
        let op = match op {
            Operator::Gt | Operator::GtEq => Operator::GtEq,
            Operator::Lt | Operator::LtEq => Operator::LtEq,
            Operator::Eq => Operator::Eq,
            _ => return None,
        };
        let ScalarValue::Date32(Some(days)) = value.cast_to(&DataType::Date32).ok()? else {
            return None;
        };
        let bound = lit(ScalarValue::Date32(Some(self.truncate(days))));
        Some(Expr::BinaryExpr(BinaryExpr::new(
            Box::new(col(PARTITION_COLUMN)),
            op,
            Box::new(bound),
        )))
    }
}

/// The schema of a relation's offline table: its columns, then for a feature group the sequence
/// column (which orders its rows for the online store; the storage layer fills it in), then the
/// partition column if any.
pub fn stored_schema(relation: &Relation) -> (SchemaRef, Vec<String>) {
    let schema = arrow_schema(&relation.columns);
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    if relation.feature_group().is_some() {
        fields.push(Field::new(SEQUENCE_COLUMN, DataType::Int64, true));
    }
    let mut partition_columns = Vec::new();
    if Partitioning::of(relation).is_some() {
        fields.push(Field::new(PARTITION_COLUMN, DataType::Date32, true));
        partition_columns.push(PARTITION_COLUMN.to_string());
    }
    (Arc::new(Schema::new(fields)), partition_columns)
}

/// The schema of the batches a write hands the offline store: [`stored_schema`] without the
/// sequence column, which the store adds.
pub fn written_schema(relation: &Relation) -> SchemaRef {
    let (stored, _) = stored_schema(relation);
    let fields: Vec<Field> = stored
        .fields()
        .iter()
        .filter(|f| f.name() != SEQUENCE_COLUMN)
        .map(|f| f.as_ref().clone())
        .collect();
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_catalog::Column;

    fn columns() -> Vec<Column> {
        vec![Column::new("ts", ColumnType::Timestamp, false)]
    }

    #[test]
    fn specs_name_the_event_time() {
        let day = Partitioning::parse("day(ts)", Some("ts"), &columns()).unwrap();
        assert_eq!(day.granularity, Granularity::Day);
        assert!(Partitioning::parse("week(ts)", Some("ts"), &columns()).is_err());
        assert!(Partitioning::parse("day(other)", Some("ts"), &columns()).is_err());
        assert!(Partitioning::parse("day ts", Some("ts"), &columns()).is_err());
    }

    #[test]
    fn truncation_and_derived_filters() {
        let month = Partitioning {
            column: "ts".into(),
            granularity: Granularity::Month,
        };
        // 2026-06-15 is day 20619 since 1970-01-01; its month starts at 2026-06-01, day 20605.
        assert_eq!(month.truncate(20_619), 20_605);
        let filter = col("ts").gt(lit(ScalarValue::TimestampMicrosecond(
            Some(20_619 * 86_400_000_000),
            None,
        )));
        assert_eq!(
            month.derived_filter(&filter),
            Some(col(PARTITION_COLUMN).gt_eq(lit(ScalarValue::Date32(Some(20_605)))))
        );
        assert_eq!(month.derived_filter(&col("ts").not_eq(lit(1))), None);
    }
}

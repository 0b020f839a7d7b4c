//! The serving fast path: a prepared `SELECT <columns> FROM online.<group> WHERE <key> = $1` (or
//! `= ANY($1)`, or literals, one equality per key column) is recognised once, when it is
//! prepared, and each execution goes straight to the online store's point gets: no DataFusion
//! optimisation, physical planning or executor hop per execution. bench/online_lookup measured
//! the difference (docs/performance.md).
//!
//! Anything else, or a group whose columns changed since the statement was prepared, takes the
//! general path.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, new_empty_array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, LogicalPlan, Operator};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use crate::Engine;
use crate::error::{SqlError, SqlResult};
use crate::online::OnlineTable;

/// Where one key column's values come from.
#[derive(Debug, Clone)]
enum KeySource {
    /// `$n` (0-based here) holding one value.
    Parameter(usize),
    /// `= ANY($n)`: a parameter holding an array of values.
    ParameterArray(usize),
    /// A literal in the statement.
    Literal(ScalarValue),
}

/// A recognised key lookup.
#[derive(Debug)]
pub struct KeyLookup {
    table: OnlineTable,
    /// Output columns, as indices into the group's columns.
    projection: Vec<usize>,
    /// The statement's result schema.
    schema: SchemaRef,
    /// One per key column, in key order.
    keys: Vec<KeySource>,
}

impl KeyLookup {
    /// The lookup a plan is, if it has the shape `Projection(columns) <- Filter(key equalities)
    /// <- TableScan(online.<group>)`, each key column pinned once.
    pub fn recognise(plan: &LogicalPlan) -> Option<KeyLookup> {
        let LogicalPlan::Projection(projection) = plan else {
            return None;
        };
        let LogicalPlan::Filter(filter) = projection.input.as_ref() else {
            return None;
        };
        let LogicalPlan::TableScan(scan) = filter.input.as_ref() else {
            return None;
        };
        if scan.projection.is_some() || !scan.filters.is_empty() || scan.fetch.is_some() {
            return None;
        }
        let provider = source_as_provider(&scan.source).ok()?;
        let table = provider.downcast_ref::<OnlineTable>()?;
        let schema = table.layout().schema.clone();
        let mut columns = Vec::with_capacity(projection.expr.len());
        for expr in &projection.expr {
            let column = match expr {
                Expr::Column(c) => c,
                Expr::Alias(alias) => match alias.expr.as_ref() {
                    Expr::Column(c) => c,
                    _ => return None,
                },
                _ => return None,
            };
            columns.push(schema.index_of(&column.name).ok()?);
        }
        let key_names: Vec<&str> = table
            .layout()
            .key_columns
            .iter()
            .map(|&i| schema.field(i).name().as_str())
            .collect();
        let mut keys: Vec<Option<KeySource>> = vec![None; key_names.len()];
        for conjunct in datafusion::logical_expr::utils::split_conjunction(&filter.predicate) {
            let (name, source) = key_source(conjunct)?;
            let position = key_names.iter().position(|k| *k == name)?;
            if keys[position].is_some() {
                return None;
            }
            keys[position] = Some(source);
        }
        let keys: Vec<KeySource> = keys.into_iter().collect::<Option<_>>()?;
        // An array parameter is a batch of keys only for a one-column key.
        if keys.len() > 1
            && keys
                .iter()
                .any(|k| matches!(k, KeySource::ParameterArray(_)))
        {
            return None;
        }
        Some(KeyLookup {
            table: table.clone(),
            projection: columns,
            schema: Arc::new(plan.schema().as_arrow().clone()),
            keys,
        })
    }

    /// Runs the lookup with these parameter values. The group is looked up again in the catalog,
    /// so a change of ttl or online flag since the statement was prepared takes effect.
    pub async fn execute(
        &self,
        engine: &Engine,
        params: Option<&ParamValues>,
    ) -> SqlResult<SendableRecordBatchStream> {
        let oid = self.table.relation().oid;
        let relation = engine
            .catalog
            .snapshot()
            .relation(oid)
            .cloned()
            .ok_or_else(|| {
                SqlError::UndefinedTable(format!(
                    "relation \"{}\" does not exist",
                    self.table.relation().qualified_name()
                ))
            })?;
        let table = OnlineTable::new(relation, engine.online.clone())?;
        let layout = table.layout();
        let mut keys: Vec<ArrayRef> = Vec::with_capacity(self.keys.len());
        for (position, source) in self.keys.iter().enumerate() {
            let data_type = layout
                .schema
                .field(layout.key_columns[position])
                .data_type();
            let values = match source {
                KeySource::Literal(value) => vec![value.clone()],
                KeySource::Parameter(index) => vec![parameter(params, *index)?],
                KeySource::ParameterArray(index) => array_elements(&parameter(params, *index)?)?,
            };
            let values = values
                .into_iter()
                .filter(|v| !v.is_null())
                .map(|v| v.cast_to(data_type))
                .collect::<datafusion::common::Result<Vec<_>>>()?;
            keys.push(if values.is_empty() {
                new_empty_array(data_type)
            } else {
                ScalarValue::iter_to_array(values)?
            });
        }
        // A NULL key in a multi-column lookup matches nothing: no key at all.
        if keys.iter().any(|k| k.is_empty()) {
            keys = layout
                .key_columns
                .iter()
                .map(|&i| new_empty_array(layout.schema.field(i).data_type()))
                .collect();
        }
        let found = engine
            .online
            .get(oid, layout, keys, table.min_age())
            .await?;
        let columns = found
            .project(&self.projection)
            .map_err(|e| SqlError::Internal(e.to_string()))?
            .columns()
            .to_vec();
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter([Ok(batch)]),
        )))
    }
}

fn placeholder_index(id: &str) -> Option<usize> {
    id.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)
}

fn key_source(expr: &Expr) -> Option<(&str, KeySource)> {
    match expr {
        Expr::BinaryExpr(binary) if binary.op == Operator::Eq => {
            match (binary.left.as_ref(), binary.right.as_ref()) {
                (Expr::Column(c), other) | (other, Expr::Column(c)) => {
                    Some((c.name.as_str(), value_source(other)?))
                }
                _ => None,
            }
        }
        Expr::ScalarFunction(call) if call.name() == "array_has" && call.args.len() == 2 => {
            let (Expr::Placeholder(p), Expr::Column(c)) = (&call.args[0], &call.args[1]) else {
                return None;
            };
            Some((
                c.name.as_str(),
                KeySource::ParameterArray(placeholder_index(&p.id)?),
            ))
        }
        _ => None,
    }
}

fn value_source(expr: &Expr) -> Option<KeySource> {
    match expr {
        Expr::Placeholder(p) => Some(KeySource::Parameter(placeholder_index(&p.id)?)),
        Expr::Literal(value, _) => Some(KeySource::Literal(value.clone())),
        _ => None,
    }
}

fn parameter(params: Option<&ParamValues>, index: usize) -> SqlResult<ScalarValue> {
    let id = format!("${}", index + 1);
    let params =
        params.ok_or_else(|| SqlError::Syntax(format!("no value was given for parameter {id}")))?;
    Ok(params.get_placeholders_with_values(&id)?.value)
}

fn array_elements(value: &ScalarValue) -> SqlResult<Vec<ScalarValue>> {
    let array = match value {
        ScalarValue::List(a) if !value.is_null() => a.value(0),
        ScalarValue::LargeList(a) if !value.is_null() => a.value(0),
        _ if value.is_null() => return Ok(Vec::new()),
        other => {
            return Err(SqlError::DatatypeMismatch(format!(
                "= ANY expects an array, got {}",
                other.data_type()
            )));
        }
    };
    (0..array.len())
        .map(|i| ScalarValue::try_from_array(&array, i).map_err(SqlError::from))
        .collect()
}

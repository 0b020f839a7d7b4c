//! The serving fast path: a prepared `SELECT <columns> FROM online.<group> WHERE <key> = $1` (or
//! `= ANY($1)`, or literals, one equality per key column) is recognised once, when it is
//! prepared, and each execution goes straight to the online store's point gets: no DataFusion
//! optimisation, physical planning or executor hop per execution. bench/online_lookup measured
//! the difference (docs/performance.md).
//!
//! Anything else, or a group whose columns changed since the statement was prepared, takes the
//! general path.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, LogicalPlan, Operator};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use quiver_storage::StoredRows;

use crate::Engine;
use crate::error::{SqlError, SqlResult};
use crate::online::{OnlineTable, key_arrays, list_elements};

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
    /// Output columns, as indices into the group's columns (shared with every execution's rows).
    projection: Arc<[usize]>,
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
        let schema = table.layout().schema().clone();
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
            .key_columns()
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
            projection: columns.into(),
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
    ) -> SqlResult<FoundRows> {
        let oid = self.table.relation().oid;
        let snapshot = engine.catalog.snapshot();
        let current = snapshot.relation(oid).ok_or_else(|| {
            SqlError::UndefinedTable(format!(
                "relation \"{}\" does not exist",
                self.table.relation().qualified_name()
            ))
        })?;
        // The table of the prepared statement serves as long as the group is unchanged; only
        // after an ALTER is it built again.
        let rebuilt;
        let table = if current == self.table.relation() {
            &self.table
        } else {
            rebuilt = OnlineTable::new(current.clone(), engine.online.clone())?;
            &rebuilt
        };
        let layout = table.layout();
        let mut lists = Vec::with_capacity(self.keys.len());
        for source in &self.keys {
            lists.push(match source {
                KeySource::Literal(value) => vec![value.clone()],
                KeySource::Parameter(index) => vec![parameter(params, *index)?],
                KeySource::ParameterArray(index) => {
                    let value = parameter(params, *index)?;
                    list_elements(&value).ok_or_else(|| {
                        SqlError::DatatypeMismatch(format!(
                            "= ANY expects an array, got {}",
                            value.data_type()
                        ))
                    })?
                }
            });
        }
        let keys = key_arrays(layout, lists)?;
        let rows = engine
            .online
            .get_stored(oid, layout, keys, table.min_age())
            .await?;
        Ok(FoundRows {
            schema: self.schema.clone(),
            projection: self.projection.clone(),
            rows,
        })
    }
}

/// The rows a key lookup found, as stored, and the statement's columns: read value by value by
/// the protocol layer, or decoded into Arrow arrays ([`FoundRows::into_stream`]).
#[derive(Debug)]
pub struct FoundRows {
    schema: SchemaRef,
    projection: Arc<[usize]>,
    rows: StoredRows,
}

impl FoundRows {
    /// The statement's result schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The statement's columns, as indices into the stored rows' columns.
    pub fn projection(&self) -> &[usize] {
        &self.projection
    }

    pub fn stored(&self) -> &StoredRows {
        &self.rows
    }

    fn into_batch(self) -> SqlResult<RecordBatch> {
        let found = self.rows.into_batch()?;
        let columns = self
            .projection
            .iter()
            .map(|&i| found.column(i).clone())
            .collect();
        RecordBatch::try_new(self.schema, columns).map_err(|e| SqlError::Internal(e.to_string()))
    }

    /// The rows as a stream of one batch.
    pub fn into_stream(self) -> SqlResult<SendableRecordBatchStream> {
        let schema = self.schema.clone();
        let batch = self.into_batch()?;
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
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

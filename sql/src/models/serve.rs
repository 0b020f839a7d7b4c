//! `serve(model, key...)`: the online path in one call. The model's feature view is served for the
//! key from the online store (as `feature_vector` serves it, with the model's own fitted
//! transformations), scored with `quiver_predict`, and every served row is appended to the model's
//! prediction log, the feature group `<model>_predictions`, so outcomes can later be ASOF-joined
//! to what was predicted.
//!
//! A call becomes a derived table whose rows are exactly the logged rows: request_id,
//! model_version, the feature vector, prediction and served_at. After planning, the derived table
//! is wrapped in a [`LogPredictions`] node, which passes its rows on and queues them for the log.
//! The log is written in the background, a batch every [`FLUSH_INTERVAL`], so serving never waits
//! for an offline commit: a crash loses the rows of the last interval.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::BatchCoalescer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion::sql::sqlparser::ast::{self, Expr, FunctionArg, TableFactor, VisitorMut};
use futures::StreamExt;
use quiver_catalog::{CatalogState, Model, Oid};

use super::predict::PREDICT_UDF;
use crate::Engine;
use crate::error::{SqlError, SqlResult};
use crate::parser::quote_ident;
use crate::relation::RelationSink;
use crate::serving::{CLOCK, Keys, expand_table_function, serving_query, unnamed_args};

/// How long served rows wait in memory before they are written to the log, together. Each write
/// is an offline commit (a Parquet file, an fsync, the Delta log read again); at five a second
/// they took an eighth of the server's CPU while serving and made its slowest requests.
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The alias marking a serve call's rows in the plan, so they can be found after planning.
const MARKER_PREFIX: &str = "__quiver_serve_";

/// The feature group a model's served rows are logged to.
pub(crate) fn log_group_name(model: &str) -> String {
    format!("{model}_predictions")
}

/// Rewrites every `serve(model, key...)` FROM item of a statement into the derived table
/// computing it; returns the models served, which must be loaded before the statement runs.
pub(crate) fn rewrite_serve_calls(
    statement: &mut ast::Statement,
    snapshot: &CatalogState,
    project: &str,
) -> SqlResult<Vec<Model>> {
    let mut calls = ServeCalls {
        snapshot,
        project,
        models: Vec::new(),
    };
    crate::feature_view::rewrite(statement, &mut calls)?;
    Ok(calls.models)
}

struct ServeCalls<'a> {
    snapshot: &'a CatalogState,
    project: &'a str,
    models: Vec<Model>,
}

impl VisitorMut for ServeCalls<'_> {
    type Break = SqlError;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<SqlError> {
        expand_table_function(factor, &["serve"], |_, args| self.query_for(args))
    }
}

impl ServeCalls<'_> {
    fn query_for(&mut self, args: &[FunctionArg]) -> SqlResult<Box<ast::Query>> {
        let usage = || {
            SqlError::InvalidParameter(
                "serve takes a model's name and the key of its feature view: serve('fraud_model', 42); 'fraud_model_2' serves version 2".into(),
            )
        };
        let exprs = unnamed_args(args).ok_or_else(usage)?;
        let Some((Expr::Value(model_name), keys)) = exprs.split_first().map(|(m, k)| (*m, k))
        else {
            return Err(usage());
        };
        let ast::Value::SingleQuotedString(model_name) = &model_name.value else {
            return Err(usage());
        };
        if keys.is_empty() {
            return Err(usage());
        }
        let model = resolve_model(self.snapshot, self.project, model_name)?;
        let Some((view_name, view_version)) = &model.feature_view else {
            return Err(SqlError::NotSupported(format!(
                "model \"{}\" version {} was trained on training dataset \"{}\", which was not made from a feature view, so there is nothing to read online for a key; score rows with predict() instead",
                model.name, model.version, model.training_dataset
            )));
        };
        let view = self
            .snapshot
            .feature_view(self.project, view_name, Some(*view_version))
            .map_err(|_| {
                SqlError::PrerequisiteState(format!(
                    "model \"{}\" version {} was trained on feature view \"{view_name}\" version {view_version}, which no longer exists; train the model again on a training dataset of a current view",
                    model.name, model.version
                ))
            })?;
        let keys = Keys::One(keys.iter().map(|k| k.to_string()).collect());
        let vector = serving_query(self.snapshot, self.project, view, &keys, &model.transforms)?;
        let features: Vec<String> = model
            .features
            .iter()
            .map(|f| format!("__quiver_vector.{}", quote_ident(f)))
            .collect();
        let sql = format!(
            "SELECT * FROM (SELECT uuid() AS request_id, CAST({version} AS INT) AS model_version, __quiver_vector.*, {PREDICT_UDF}({oid}, {features}) AS prediction, {CLOCK}() AS served_at FROM ({vector}) AS __quiver_vector) AS {MARKER_PREFIX}{oid}",
            version = model.version,
            oid = model.oid,
            features = features.join(", "),
        );
        self.models.push(model.clone());
        crate::serving::parse_query(&sql)
    }
}

/// A model by name: its latest version, or `<name>_<n>` for version n.
fn resolve_model<'a>(
    snapshot: &'a CatalogState,
    project: &str,
    name: &str,
) -> SqlResult<&'a Model> {
    if let Ok(latest) = snapshot.model(project, name, None) {
        return Ok(latest);
    }
    if let Some((base, version)) = name.rsplit_once('_')
        && let Ok(version) = version.parse::<u32>()
        && let Ok(model) = snapshot.model(project, base, Some(version))
    {
        return Ok(model);
    }
    Ok(snapshot.model(project, name, None)?)
}

/// The models a planned statement serves (by the marker aliases of their rows).
pub(crate) fn served_models(plan: &LogicalPlan) -> Vec<Oid> {
    let mut oids = Vec::new();
    let _ = plan.apply(|node| {
        if let Some(oid) = marker_oid(node)
            && !oids.contains(&oid)
        {
            oids.push(oid);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    oids
}

fn marker_oid(node: &LogicalPlan) -> Option<Oid> {
    match node {
        LogicalPlan::SubqueryAlias(alias) => alias
            .alias
            .table()
            .strip_prefix(MARKER_PREFIX)
            .and_then(|oid| oid.parse().ok()),
        _ => None,
    }
}

/// Wraps each serve call's rows in a [`LogPredictions`] node writing to `logs[model oid]`.
pub(crate) fn with_logging(
    plan: LogicalPlan,
    logs: &HashMap<Oid, Oid>,
    sink: &Arc<PredictionLog>,
) -> SqlResult<LogicalPlan> {
    let logged = plan.transform_up(|node| {
        let Some(log) = marker_oid(&node).and_then(|oid| logs.get(&oid)) else {
            return Ok(Transformed::no(node));
        };
        Ok(Transformed::yes(LogicalPlan::Extension(Extension {
            node: Arc::new(LogPredictions {
                input: node,
                log: *log,
                sink: sink.clone(),
            }),
        })))
    })?;
    Ok(logged.data)
}

/// Passes its input's rows on and queues them for the prediction log `log`.
#[derive(Debug, Clone)]
pub(crate) struct LogPredictions {
    input: LogicalPlan,
    /// The OID of the log's feature group.
    log: Oid,
    sink: Arc<PredictionLog>,
}

impl PartialEq for LogPredictions {
    fn eq(&self, other: &Self) -> bool {
        self.input == other.input && self.log == other.log
    }
}

impl Eq for LogPredictions {}

impl PartialOrd for LogPredictions {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match self.log.partial_cmp(&other.log) {
            Some(std::cmp::Ordering::Equal) => self.input.partial_cmp(&other.input),
            order => order,
        }
    }
}

impl Hash for LogPredictions {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.log.hash(state);
    }
}

impl UserDefinedLogicalNodeCore for LogPredictions {
    fn name(&self) -> &str {
        "LogPredictions"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<datafusion::logical_expr::Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LogPredictions: log={}", self.log)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<datafusion::logical_expr::Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        Ok(LogPredictions {
            input: inputs.swap_remove(0),
            log: self.log,
            sink: self.sink.clone(),
        })
    }
}

impl LogPredictions {
    /// The physical plan of this node over its planned input.
    pub(crate) fn plan(
        node: &dyn UserDefinedLogicalNode,
        input: &Arc<dyn ExecutionPlan>,
    ) -> Option<Arc<dyn ExecutionPlan>> {
        let node = node.as_any().downcast_ref::<LogPredictions>()?;
        Some(Arc::new(LogPredictionsExec::new(
            input.clone(),
            node.log,
            node.sink.clone(),
        )))
    }
}

#[derive(Debug)]
struct LogPredictionsExec {
    input: Arc<dyn ExecutionPlan>,
    log: Oid,
    sink: Arc<PredictionLog>,
    properties: Arc<PlanProperties>,
}

impl LogPredictionsExec {
    /// Its properties are its input's: rows pass through as they are, partition by partition
    /// (recomputed whenever the optimizer gives it a new input).
    fn new(input: Arc<dyn ExecutionPlan>, log: Oid, sink: Arc<PredictionLog>) -> Self {
        LogPredictionsExec {
            properties: Arc::new(PlanProperties::new(
                input.equivalence_properties().clone(),
                input.output_partitioning().clone(),
                input.pipeline_behavior(),
                input.boundedness(),
            )),
            input,
            log,
            sink,
        }
    }
}

impl DisplayAs for LogPredictionsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LogPredictionsExec: log={}", self.log)
    }
}

impl ExecutionPlan for LogPredictionsExec {
    fn name(&self) -> &str {
        "LogPredictionsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(LogPredictionsExec::new(
            children.swap_remove(0),
            self.log,
            self.sink.clone(),
        )))
    }

    /// Keeps its properties when the new input has the old one's: a kept plan is copied at
    /// every execution of its prepared statement (`kept_plan::bind`).
    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(datafusion::common::DataFusionError::Internal(
                "LogPredictionsExec takes one child".into(),
            ));
        }
        match options.children_properties {
            ChildrenPropertiesMode::Keep => Ok(Arc::new(LogPredictionsExec {
                input: children.swap_remove(0),
                log: self.log,
                sink: self.sink.clone(),
                properties: self.properties.clone(),
            })),
            #[allow(deprecated)]
            ChildrenPropertiesMode::Recompute => self.with_new_children(children),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        // A prepared statement keeps the log it was planned with; served rows must not go to
        // a log that is gone.
        if !self.sink.log_exists(self.log) {
            return Err(datafusion::common::DataFusionError::External(Box::new(
                SqlError::UndefinedTable(format!(
                    "the prediction log this statement appends to (feature group OID {}) was dropped; prepare the statement again to log to a new one",
                    self.log
                )),
            )));
        }
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let (log, sink) = (self.log, self.sink.clone());
        let logged = input.then(move |batch| {
            let sink = sink.clone();
            async move {
                if let Ok(batch) = &batch
                    && batch.num_rows() > 0
                {
                    sink.enqueue(log, batch.clone());
                    sink.room().await;
                }
                batch
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, logged)))
    }
}

/// Served rows waiting to be written to their logs, by the log's feature group OID.
#[derive(Debug)]
pub(crate) struct PredictionLog {
    engine: std::sync::Weak<Engine>,
    pending: Mutex<HashMap<Oid, PendingRows>>,
    flush_scheduled: std::sync::atomic::AtomicBool,
    /// Held while queued rows are written, so a flush at shutdown waits for one under way and
    /// flushes never write one log side by side.
    writing: tokio::sync::Mutex<()>,
    /// The estimated size of the queued rows (see [`PendingRows::bytes`]).
    pending_bytes: std::sync::atomic::AtomicUsize,
    /// Told when queued rows have been written (or discarded).
    written: tokio::sync::Notify,
}

/// How much served rows may wait in memory. The log is written by threads that run only when
/// the CPU has nothing else to do; a server serving without pause would queue rows without end.
/// Beyond this, serving calls wait for the log to be written before they answer.
const PENDING_BYTES_LIMIT: usize = 256 << 20;

/// One log's queued rows, copied into batches of [`PENDING_BATCH_ROWS`] as they come. Each
/// request brings a batch of its one row; kept as they came and written together, ten thousand
/// one-row batches a second took nearly half the server's CPU, all at once at every flush
/// (checks, casts and Parquet level building per batch and column), and made the slowest
/// requests. Copied at once, a row costs a copy of its values on the thread that served it.
#[derive(Debug)]
struct PendingRows {
    /// Rows of another schema than the current coalescer's (a log takes the rows of every
    /// statement serving its model, and those may differ in nullability), and full batches.
    batches: Vec<RecordBatch>,
    coalescer: BatchCoalescer,
    /// The estimated size of a row of the coalescer's schema.
    row_bytes: usize,
    /// The rows' estimated size: fixed-width values at their width, others at
    /// [`VARIABLE_WIDTH_BYTES`].
    bytes: usize,
}

/// The size a variable-width value (text, an array) is estimated at.
const VARIABLE_WIDTH_BYTES: usize = 32;

/// The estimated size of a row of `schema` (see [`PendingRows::bytes`]).
fn row_bytes(schema: &SchemaRef) -> usize {
    schema
        .fields()
        .iter()
        .map(|f| {
            f.data_type()
                .primitive_width()
                .unwrap_or(VARIABLE_WIDTH_BYTES)
        })
        .sum()
}

/// Rows per batch of a log's queued rows.
const PENDING_BATCH_ROWS: usize = 8192;

impl PendingRows {
    fn new(schema: SchemaRef) -> PendingRows {
        PendingRows {
            batches: Vec::new(),
            row_bytes: row_bytes(&schema),
            coalescer: BatchCoalescer::new(schema, PENDING_BATCH_ROWS),
            bytes: 0,
        }
    }

    /// Queues the rows of `batch`; returns their estimated size.
    fn push(&mut self, batch: RecordBatch) -> Result<usize, ArrowError> {
        if self.coalescer.schema() != batch.schema() {
            self.end_batch()?;
            self.row_bytes = row_bytes(batch.schema_ref());
            self.coalescer = BatchCoalescer::new(batch.schema(), PENDING_BATCH_ROWS);
        }
        let bytes = batch.num_rows() * self.row_bytes;
        self.coalescer.push_batch(batch)?;
        while let Some(full) = self.coalescer.next_completed_batch() {
            self.batches.push(full);
        }
        self.bytes += bytes;
        Ok(bytes)
    }

    /// Ends the batch being filled: its rows join the queued batches.
    fn end_batch(&mut self) -> Result<(), ArrowError> {
        self.coalescer.finish_buffered_batch()?;
        while let Some(batch) = self.coalescer.next_completed_batch() {
            self.batches.push(batch);
        }
        Ok(())
    }

    /// Every queued row, as batches.
    fn finish_batches(&mut self) -> Result<Vec<RecordBatch>, ArrowError> {
        self.end_batch()?;
        Ok(std::mem::take(&mut self.batches))
    }

    /// Writes one log's queued rows, or says why they are discarded.
    async fn write(&mut self, engine: &Engine, log: Oid) {
        let snapshot = engine.catalog.snapshot();
        let Some(relation) = snapshot.relation(log) else {
            tracing::warn!(log, "prediction log dropped; its queued rows are discarded");
            return;
        };
        let batches = match self.finish_batches() {
            Ok(batches) => batches,
            Err(e) => {
                tracing::error!(log = %relation.qualified_name(), error = %e, "served predictions could not be gathered");
                return;
            }
        };
        let count: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if let Err(e) = RelationSink::write_batches(relation, engine, batches).await {
            tracing::error!(log = %relation.qualified_name(), rows = count, error = %e, "writing served predictions failed");
        }
    }
}

impl PredictionLog {
    pub(crate) fn new(engine: std::sync::Weak<Engine>) -> PredictionLog {
        PredictionLog {
            engine,
            pending: Mutex::new(HashMap::new()),
            flush_scheduled: std::sync::atomic::AtomicBool::new(false),
            writing: tokio::sync::Mutex::new(()),
            pending_bytes: std::sync::atomic::AtomicUsize::new(0),
            written: tokio::sync::Notify::new(),
        }
    }

    fn enqueue(self: &Arc<Self>, log: Oid, batch: RecordBatch) {
        if let Ok(mut pending) = self.pending.lock() {
            let rows = pending
                .entry(log)
                .or_insert_with(|| PendingRows::new(batch.schema()));
            match rows.push(batch) {
                Ok(bytes) => {
                    self.pending_bytes.fetch_add(bytes, Ordering::AcqRel);
                }
                // Not reachable while a log's rows keep their column types (ensure_logs).
                Err(e) => {
                    tracing::error!(log, error = %e, "a served row could not be queued for its log")
                }
            }
        }
        if self.flush_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let this = self.clone();
        let background = engine.background().clone();
        background.spawn(async move {
            tokio::time::sleep(FLUSH_INTERVAL).await;
            // Rows queued from here on schedule the next flush.
            this.flush_scheduled.store(false, Ordering::Release);
            this.flush(&engine).await;
        });
    }

    /// Whether the log's feature group is in the catalog.
    fn log_exists(&self, log: Oid) -> bool {
        self.engine
            .upgrade()
            .is_some_and(|engine| engine.catalog.snapshot().relation(log).is_some())
    }

    /// Waits while more rows are queued than [`PENDING_BYTES_LIMIT`] allows.
    async fn room(&self) {
        loop {
            // Made before the check, so a write finishing in between still wakes it.
            let written = self.written.notified();
            if self.pending_bytes.load(Ordering::Acquire) <= PENDING_BYTES_LIMIT {
                return;
            }
            written.await;
        }
    }

    /// Writes every queued row, one commit per log.
    pub(crate) async fn flush(&self, engine: &Engine) {
        let _writing = self.writing.lock().await;
        let pending = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return,
        };
        for (log, mut rows) in pending {
            rows.write(engine, log).await;
            self.pending_bytes.fetch_sub(rows.bytes, Ordering::AcqRel);
            self.written.notify_waiters();
        }
    }
}

/// The prediction log of each served model (by model OID), created when missing: the latest
/// version of `<model>_predictions` if its columns are the served rows' columns, else a new
/// version with them.
pub(crate) async fn ensure_logs(
    engine: &Arc<Engine>,
    project: &str,
    user: &str,
    plan: &LogicalPlan,
) -> SqlResult<HashMap<Oid, Oid>> {
    let mut rows: Vec<(Oid, DFSchemaRef)> = Vec::new();
    let _ = plan.apply(|node| {
        if let Some(oid) = marker_oid(node)
            && !rows.iter().any(|(o, _)| *o == oid)
        {
            rows.push((oid, node.schema().clone()));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let mut logs = HashMap::new();
    for (model_oid, schema) in rows {
        let snapshot = engine.catalog.snapshot();
        let model = snapshot.model_by_oid(model_oid).ok_or_else(|| {
            SqlError::UndefinedTable(format!("model {model_oid} was dropped meanwhile"))
        })?;
        let name = log_group_name(&model.name);
        let columns: Vec<(String, String)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), column_type(f.data_type())))
            .collect();
        let latest = snapshot
            .feature_group_versions(project, &name)
            .max_by_key(|g| g.feature_group().map(|spec| spec.version));
        let fits = latest.is_some_and(|group| {
            group.columns.len() == columns.len()
                && group.columns.iter().zip(&columns).all(|(c, (n, t))| {
                    &c.name == n && &column_type(&crate::types::arrow_type(&c.data_type)) == t
                })
        });
        if let (true, Some(group)) = (fits, latest) {
            logs.insert(model_oid, group.oid);
            continue;
        }
        let version = latest
            .and_then(|g| g.feature_group())
            .map_or(1, |spec| spec.version + 1);
        let definitions: Vec<String> = columns
            .iter()
            .map(|(n, t)| format!("{} {t}", quote_ident(n)))
            .collect();
        let ddl = format!(
            "CREATE FEATURE GROUP {} VERSION {version} ({}, PRIMARY KEY (request_id), EVENT TIME served_at) WITH (description = 'requests served by model {}: feature vectors and predictions')",
            quote_ident(&name),
            definitions.join(", "),
            model.name.replace('\'', "''")
        );
        let statement = crate::parser::parse(&ddl)
            .map_err(|e| SqlError::Internal(format!("{ddl}: {e}")))?
            .into_iter()
            .next()
            .ok_or_else(|| SqlError::Internal(format!("{ddl}: no statement")))?;
        crate::ddl::execute(engine, project, user, &statement).await?;
        let created = engine
            .catalog
            .snapshot()
            .feature_group(project, &name, Some(version))?
            .oid;
        logs.insert(model_oid, created);
    }
    Ok(logs)
}

/// The type of a log column for CREATE FEATURE GROUP, from the Arrow type of the served column.
fn column_type(data_type: &datafusion::arrow::datatypes::DataType) -> String {
    let name = crate::feature_view::pg_type_name(data_type);
    match name.strip_prefix('_') {
        Some(element) => format!("{element}[]"),
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn row(schema: &Arc<Schema>, id: i64, score: Option<f64>) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![id])),
                Arc::new(Float64Array::from(vec![score])),
            ],
        )
        .unwrap()
    }

    /// One-row batches are queued as few batches, in order; rows of another schema (a statement
    /// whose prediction is never NULL) start a batch of their own; the size estimate counts
    /// every row.
    #[test]
    fn served_rows_are_queued_as_few_batches_in_order() {
        let nullable = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("prediction", DataType::Float64, true),
        ]));
        let not_null = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("prediction", DataType::Float64, false),
        ]));
        let mut rows = PendingRows::new(nullable.clone());
        let mut bytes = 0;
        for id in 0..PENDING_BATCH_ROWS as i64 + 3 {
            bytes += rows.push(row(&nullable, id, Some(0.5))).unwrap();
        }
        bytes += rows.push(row(&not_null, -1, Some(0.25))).unwrap();
        bytes += rows.push(row(&nullable, -2, None)).unwrap();
        assert_eq!(bytes, (PENDING_BATCH_ROWS + 5) * 16);
        assert_eq!(rows.bytes, bytes);

        let batches = rows.finish_batches().unwrap();
        let sizes: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, [PENDING_BATCH_ROWS, 3, 1, 1]);
        assert_eq!(batches[2].schema(), not_null);
        let ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        let expected: Vec<i64> = (0..PENDING_BATCH_ROWS as i64 + 3).chain([-1, -2]).collect();
        assert_eq!(ids, expected);
        assert!(batches[3].column(1).is_null(0));
        assert!(rows.finish_batches().unwrap().is_empty());
    }
}

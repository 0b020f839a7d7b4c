//! A feature group version or plain table as DataFusion sees it: scans read the offline store, and
//! INSERT goes through [`RelationSink`], which validates every row before one atomic commit.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, RecordBatchOptions, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column as PhysicalColumn};
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_plan::PlanProperties;
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;
use quiver_catalog::{ColumnType, Relation};
use quiver_storage::SEQUENCE_COLUMN;

use crate::Engine;
use crate::error::SqlError;
use crate::online::CommitChange;
use crate::partitioning::{Partitioning, written_schema};
use crate::transaction::{self, BlockWrites, Deferred, TableChange};
use crate::types::{arrow_schema, planning_schema};

/// A relation of the offline store, readable and insertable.
///
/// The offline version to read is chosen when a scan starts, not when the query is planned, so a
/// prepared statement executed again sees the rows written since.
#[derive(Debug)]
pub struct RelationTable {
    relation: Relation,
    /// The schema DataFusion plans with: the catalog's columns, all nullable, so that NULLs reach
    /// our validation (which names row and column) instead of a generic DataFusion check.
    planning_schema: SchemaRef,
    engine: Arc<Engine>,
    /// The offline version every scan reads, when pinned (training datasets read the versions
    /// they recorded); otherwise the version current when the scan starts.
    pinned_version: Option<u64>,
    /// Read through another project's share: never writable from there.
    shared: bool,
}

impl RelationTable {
    /// The relation as a DataFusion table.
    pub fn new(relation: Relation, engine: Arc<Engine>) -> Self {
        let planning_schema = planning_schema(&relation.columns);
        RelationTable {
            relation,
            planning_schema,
            engine,
            pinned_version: None,
            shared: false,
        }
    }

    /// The same table as another project reads it through a share. Read-only.
    pub(crate) fn shared(mut self) -> RelationTable {
        self.shared = true;
        self
    }

    /// The same table reading offline version `version` only. Read-only.
    pub(crate) fn pinned_at(mut self, version: Option<u64>) -> RelationTable {
        self.pinned_version = version;
        self
    }

    /// The same table with the feature group's commit sequence ([`SEQUENCE_COLUMN`]) as a last
    /// column, for the ASOF join's ties. Read-only.
    pub(crate) fn with_commit_sequence(&self) -> RelationTable {
        let mut fields = self.planning_schema.fields().to_vec();
        fields.push(Arc::new(Field::new(SEQUENCE_COLUMN, DataType::Int64, true)));
        RelationTable {
            relation: self.relation.clone(),
            planning_schema: Arc::new(Schema::new(fields)),
            engine: self.engine.clone(),
            pinned_version: self.pinned_version,
            shared: self.shared,
        }
    }

    pub(crate) fn relation(&self) -> &Relation {
        &self.relation
    }

    /// Refuses writes through the read-only variant made by [`Self::with_commit_sequence`].
    fn check_writable(&self) -> DfResult<()> {
        if self.shared {
            return Err(DataFusionError::External(Box::new(
                crate::access::shared_read_only(
                    &self.relation.project,
                    &self.relation.qualified_name(),
                ),
            )));
        }
        if self.pinned_version.is_some() {
            return Err(DataFusionError::Internal(
                "a feature group read at a pinned version is not writable".into(),
            ));
        }
        if self.planning_schema.fields().len() > self.relation.columns.len() {
            return Err(DataFusionError::Internal(
                "a feature group read with its commit sequence is not writable".into(),
            ));
        }
        Ok(())
    }

    /// The committed rows of the columns `wanted` (indices into the relation's columns, one past
    /// them for the commit sequence), typed as planned.
    async fn scan_offline(
        &self,
        state: &dyn Session,
        wanted: &[usize],
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let external = |e| DataFusionError::External(Box::new(SqlError::from(e)));
        let offline_scan = self
            .engine
            .offline
            .table_provider(self.relation.oid, self.pinned_version, state)
            .await
            .map_err(external)?;
        // Stored columns are found by name: the stored table may also hold the hidden partition
        // column, and a column the catalog does not know yet (an ADD COLUMN interrupted between
        // storage and catalog); neither is ever read here.
        let stored = offline_scan.schema();
        let stored_projection = wanted
            .iter()
            .map(|&i| {
                let name = match self.relation.columns.get(i) {
                    Some(column) => &column.name,
                    None => SEQUENCE_COLUMN,
                };
                stored.index_of(name).map_err(|_| {
                    DataFusionError::External(Box::new(SqlError::Internal(format!(
                        "column \"{name}\" of \"{}\" is missing from its offline table",
                        self.relation.qualified_name()
                    ))))
                })
            })
            .collect::<DfResult<Vec<usize>>>()?;
        let mut filters = filters.to_vec();
        if let Some(partitioning) = Partitioning::of(&self.relation) {
            let derived: Vec<Expr> = filters
                .iter()
                .filter_map(|f| partitioning.derived_filter(f))
                .collect();
            filters.extend(derived);
        }
        let scan = offline_scan
            .scan(state, Some(&stored_projection), &filters, limit)
            .await?;
        conform_scan(scan, &self.planning_schema.project(wanted)?)
    }

    /// The rows a transaction block's statement sees: the committed rows its DELETEs left, and
    /// the rows it inserted (whose commit sequence is later than any committed row's).
    async fn scan_with_block(
        &self,
        state: &dyn Session,
        wanted: &[usize],
        filters: &[Expr],
        change: TableChange,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let planned = Arc::new(self.planning_schema.project(wanted)?);
        let committed = match &change.deleted {
            None => self.scan_offline(state, wanted, filters, None).await?,
            Some(deleted) => {
                // The predicate's columns are read too, filtered on, then projected away.
                let mut needed = wanted.to_vec();
                for column in deleted.column_refs() {
                    if let Some(index) = self
                        .relation
                        .columns
                        .iter()
                        .position(|c| c.name == column.name)
                        && !needed.contains(&index)
                    {
                        needed.push(index);
                    }
                }
                let scan = self.scan_offline(state, &needed, filters, None).await?;
                let keep = transaction::kept_by(deleted, &scan.schema())
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                // `needed` starts with `wanted`: the filter keeps those columns.
                Arc::new(
                    FilterExecBuilder::new(keep, scan)
                        .apply_projection(Some((0..wanted.len()).collect()))?
                        .build()?,
                )
            }
        };
        let mut own = Vec::with_capacity(change.rows.len());
        for batch in &change.rows {
            let columns: Vec<ArrayRef> = wanted
                .iter()
                .map(|&index| match batch.columns().get(index) {
                    Some(column) => column.clone(),
                    None => Arc::new(Int64Array::from_value(i64::MAX, batch.num_rows())),
                })
                .collect();
            own.push(RecordBatch::try_new_with_options(
                planned.clone(),
                columns,
                &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
            )?);
        }
        let own = MemorySourceConfig::try_new_exec(&[own], planned, None)?;
        UnionExec::try_new(vec![committed, own])
    }
}

#[async_trait]
impl TableProvider for RelationTable {
    fn schema(&self) -> SchemaRef {
        self.planning_schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = match projection {
            Some(indices) => indices.clone(),
            None => (0..self.relation.columns.len()).collect(),
        };
        // Inside a transaction block, its statements see its own writes.
        let change = match BlockWrites::open_in(state.config()) {
            Some(block) if self.pinned_version.is_none() => block
                .change_of(self.relation.oid)
                .map_err(|e| DataFusionError::External(Box::new(e)))?,
            _ => None,
        };
        match change {
            None => self.scan_offline(state, &wanted, filters, limit).await,
            Some(change) => self.scan_with_block(state, &wanted, filters, change).await,
        }
    }

    /// Filters reach the offline scan, which skips files and row groups by their statistics; the
    /// rows are filtered again above it.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.check_writable()?;
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::External(Box::new(SqlError::NotSupported(
                format!(
                    "{insert_op} into \"{}\" is not supported; the offline store keeps full history, use INSERT",
                    self.relation.qualified_name()
                ),
            ))));
        }
        let sink = RelationSink {
            relation: self.relation.clone(),
            schema: self.planning_schema.clone(),
            engine: self.engine.clone(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    /// `DELETE FROM <relation> [WHERE ...]`: a real delete in the offline table format (the files
    /// holding matching rows are rewritten without them), and for a feature group with online
    /// data the keys are removed from the online store under the same writer lock. A feature
    /// group's rows are deleted by key: the predicate may only name primary-key columns, so that
    /// a key's whole history goes and the online store stays the latest row per remaining key.
    async fn delete_from(
        &self,
        _state: &dyn Session,
        filters: Vec<Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.check_writable()?;
        let name = self.relation.qualified_name();
        let key_columns = delete_keys(&self.relation);
        let mut predicate: Option<Expr> = None;
        for filter in filters {
            let filter = unqualified(filter)?;
            if self.relation.feature_group().is_some() {
                for column in filter.column_refs() {
                    if !key_columns.contains(&column.name) {
                        return Err(DataFusionError::External(Box::new(SqlError::NotSupported(
                            format!(
                                "DELETE FROM feature group \"{name}\" may only filter on its primary key ({}), not on \"{}\"",
                                key_columns.join(", "),
                                column.name
                            ),
                        ))));
                    }
                }
            }
            predicate = Some(match predicate {
                Some(p) => p.and(filter),
                None => filter,
            });
        }
        Ok(Arc::new(DeleteExec::new(
            self.relation.clone(),
            self.engine.clone(),
            predicate.unwrap_or_else(|| datafusion::prelude::lit(true)),
        )))
    }
}

/// The filter with its columns unqualified: the offline store knows them by bare name.
/// The offline scan reads text as Utf8View while queries are planned with the catalog's Utf8;
/// operators that check their input's types (aggregates) would see two types for one column.
/// Columns whose types differ are cast to the planned ones.
fn conform_scan(
    scan: Arc<dyn ExecutionPlan>,
    planned: &Schema,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let produced = scan.schema();
    let differs = produced
        .fields()
        .iter()
        .zip(planned.fields())
        .any(|(p, e)| p.data_type() != e.data_type());
    if !differs {
        return Ok(scan);
    }
    let exprs: Vec<ProjectionExpr> = planned
        .fields()
        .iter()
        .enumerate()
        .map(|(index, field)| {
            let column: Arc<dyn PhysicalExpr> = Arc::new(PhysicalColumn::new(field.name(), index));
            let expr: Arc<dyn PhysicalExpr> =
                if produced.field(index).data_type() == field.data_type() {
                    column
                } else {
                    Arc::new(CastExpr::new(column, field.data_type().clone(), None))
                };
            ProjectionExpr {
                expr,
                alias: field.name().clone(),
            }
        })
        .collect();
    Ok(Arc::new(ProjectionExec::try_new(exprs, scan)?))
}

fn unqualified(filter: Expr) -> DfResult<Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    filter
        .transform(|e| match e {
            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(
                datafusion::common::Column::new_unqualified(c.name),
            ))),
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
}

/// Runs one DELETE when executed (not when planned, so EXPLAIN deletes nothing) and yields the
/// number of rows deleted.
#[derive(Debug)]
struct DeleteExec {
    relation: Relation,
    engine: Arc<Engine>,
    predicate: Expr,
    properties: Arc<PlanProperties>,
}

impl DeleteExec {
    fn new(relation: Relation, engine: Arc<Engine>, predicate: Expr) -> Self {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "count",
            DataType::UInt64,
            false,
        )]));
        let properties = crate::online::leaf_properties(schema);
        DeleteExec {
            relation,
            engine,
            predicate,
            properties,
        }
    }
}

impl DisplayAs for DeleteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "DeleteExec: relation={}, predicate={}",
            self.relation.qualified_name(),
            self.predicate
        )
    }
}

impl ExecutionPlan for DeleteExec {
    fn name(&self) -> &str {
        "DeleteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        crate::online::childless(self, children)
    }

    fn execute(
        &self,
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let relation = self.relation.clone();
        let engine = self.engine.clone();
        let predicate = self.predicate.clone();
        let block = BlockWrites::open_in(context.session_config());
        let schema = self.properties.eq_properties.schema().clone();
        let output_schema = schema.clone();
        let deleted = async move {
            let rows = match block {
                Some(block) => defer_delete(&relation, &engine, &block, predicate).await,
                None => delete_rows(&relation, &engine, predicate, None).await,
            }
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let count: ArrayRef = Arc::new(UInt64Array::from(vec![rows]));
            Ok(RecordBatch::try_new(output_schema, vec![count])?)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(deleted),
        )))
    }
}

/// Deletes the rows matching `predicate` (over bare column names) from both stores now; a
/// feature group's by key. A `tag` is recorded in the offline commit (see `transaction`).
pub(crate) async fn delete_rows(
    relation: &Relation,
    engine: &Engine,
    predicate: Expr,
    tag: Option<&str>,
) -> Result<u64, SqlError> {
    let key_columns = delete_keys(relation);
    let commit = engine
        .offline
        .delete_then(
            relation.oid,
            predicate,
            &key_columns,
            tag,
            |commit, keys| {
                crate::online::after_commit(
                    engine,
                    relation,
                    commit.version,
                    CommitChange::Deleted(keys),
                )
            },
        )
        .await?;
    Ok(commit.rows)
}

/// The columns a DELETE removes whole histories by: a feature group's primary key.
fn delete_keys(relation: &Relation) -> Vec<String> {
    match relation.feature_group() {
        Some(_) => relation.primary_key.clone(),
        None => Vec::new(),
    }
}

/// DELETE inside a transaction block: counts the rows the block's view of the relation has that
/// match (committed rows not deleted by the block yet, and the block's own rows), and defers the
/// delete to COMMIT.
async fn defer_delete(
    relation: &Relation,
    engine: &Engine,
    block: &BlockWrites,
    predicate: Expr,
) -> Result<u64, SqlError> {
    let change = block.change_of(relation.oid)?;
    let mut matching = predicate.clone();
    let mut own = 0;
    if let Some(change) = &change {
        own = transaction::matching_rows(relation, &change.rows, &predicate)?;
        if let Some(deleted) = &change.deleted {
            matching = matching.and(deleted.clone().is_not_true());
        }
    }
    let context = datafusion::prelude::SessionContext::new();
    let table = engine
        .offline
        .table_provider(relation.oid, None, &context.state())
        .await?;
    let committed = context.read_table(table)?.filter(matching)?.count().await?;
    block.defer(Deferred::Delete {
        relation: relation.clone(),
        predicate,
    })?;
    Ok(committed as u64 + own)
}

/// Receives the rows of one INSERT, checks them all, and commits them as one offline write.
#[derive(Debug)]
pub struct RelationSink {
    relation: Relation,
    /// The nullable planning schema: NOT NULL is checked by [`conform_batch`], which names the row.
    schema: SchemaRef,
    engine: Arc<Engine>,
}

impl RelationSink {
    /// Validates and commits batches whose columns are the relation's, in order: one offline
    /// commit, applied to the online store before the statement is acknowledged when the group
    /// has online data (decided under the table's writer lock, see `online::backfill`).
    pub async fn write_batches(
        relation: &Relation,
        engine: &Engine,
        batches: Vec<RecordBatch>,
    ) -> Result<u64, SqlError> {
        let conformed = conform_rows(relation, batches)?;
        Self::commit_conformed(relation, engine, conformed, None).await
    }

    /// Commits rows [`conform_rows`] already checked, with a tag recorded in the offline commit
    /// when given (a transaction block's multi-table commit, see `transaction`).
    pub(crate) async fn commit_conformed(
        relation: &Relation,
        engine: &Engine,
        conformed: Vec<RecordBatch>,
        tag: Option<&str>,
    ) -> Result<u64, SqlError> {
        let partitioning = Partitioning::of(relation);
        let stored = written_schema(relation);
        let mut checked = Vec::with_capacity(conformed.len());
        for conformed in conformed {
            checked.push(match &partitioning {
                None => conformed,
                Some(partitioning) => {
                    let event_time =
                        conformed
                            .column_by_name(&partitioning.column)
                            .ok_or_else(|| {
                                SqlError::Internal("the partitioning column is missing".into())
                            })?;
                    let mut columns = conformed.columns().to_vec();
                    columns.push(partitioning.partition_values(event_time)?);
                    RecordBatch::try_new(stored.clone(), columns)
                        .map_err(|e| SqlError::Internal(e.to_string()))?
                }
            });
        }
        let online_rows: Vec<RecordBatch> = match relation.feature_group() {
            Some(_) => {
                let columns: Vec<usize> = (0..relation.columns.len()).collect();
                checked
                    .iter()
                    .map(|b| b.project(&columns))
                    .collect::<Result<_, _>>()
                    .map_err(|e| SqlError::Internal(e.to_string()))?
            }
            None => Vec::new(),
        };
        let commit = engine
            .offline
            .append_then(relation.oid, checked, tag, |commit| {
                crate::online::after_commit(
                    engine,
                    relation,
                    commit.version,
                    CommitChange::Rows(online_rows),
                )
            })
            .await?;
        Ok(commit.rows)
    }

    /// Writes the rows of one statement now, or, inside a transaction block, checks them now
    /// and defers them to its COMMIT. Returns the number of rows.
    pub(crate) async fn write_or_defer(
        relation: &Relation,
        engine: &Engine,
        block: Option<&BlockWrites>,
        batches: Vec<RecordBatch>,
    ) -> Result<u64, SqlError> {
        let Some(block) = block else {
            return Self::write_batches(relation, engine, batches).await;
        };
        let rows = conform_rows(relation, batches)?;
        let count = rows.iter().map(|b| b.num_rows() as u64).sum();
        block.defer(Deferred::Append {
            relation: relation.clone(),
            rows,
        })?;
        Ok(count)
    }
}

/// Checks every row of one statement against the relation's constraints and casts the batches to
/// its columns' types ([`crate::types::arrow_schema`]); an error names the row.
pub(crate) fn conform_rows(
    relation: &Relation,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, SqlError> {
    let schema = arrow_schema(&relation.columns);
    let mut conformed = Vec::with_capacity(batches.len());
    let mut first_row = 1;
    for batch in batches {
        conformed.push(conform_batch(relation, &schema, &batch, first_row)?);
        first_row += batch.num_rows();
    }
    Ok(conformed)
}

impl DisplayAs for RelationSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "OfflineWrite: relation={}",
            self.relation.qualified_name()
        )
    }
}

#[async_trait]
impl DataSink for RelationSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        // The whole statement is collected first: nothing is written unless every row is valid.
        let mut batches = Vec::new();
        while let Some(batch) = data.next().await {
            batches.push(batch?);
        }
        let block = BlockWrites::open_in(context.session_config());
        RelationSink::write_or_defer(&self.relation, &self.engine, block.as_deref(), batches)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

/// Checks one batch against the relation's constraints and casts it to the stored schema.
/// `first_row` is the 1-based number of the batch's first row within the statement.
fn conform_batch(
    relation: &Relation,
    schema: &SchemaRef,
    batch: &RecordBatch,
    first_row: usize,
) -> Result<RecordBatch, SqlError> {
    let name = relation.qualified_name();
    if batch.num_columns() != relation.columns.len() {
        return Err(SqlError::Syntax(format!(
            "INSERT into \"{name}\" has {} columns, the relation has {}",
            batch.num_columns(),
            relation.columns.len()
        )));
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (index, column) in relation.columns.iter().enumerate() {
        let array = batch.column(index);
        if !column.nullable
            && let Some(row) = first_null(array.as_ref())
        {
            return Err(SqlError::NotNull(format!(
                "null value in column \"{}\" of relation \"{name}\" violates not-null constraint (row {})",
                column.name,
                first_row + row
            )));
        }
        let target = schema.field(index).data_type();
        let array = if array.data_type() == target {
            array.clone()
        } else {
            cast(array, target).map_err(|e| {
                SqlError::DatatypeMismatch(format!(
                    "column \"{}\" of relation \"{name}\" is of type {} but the value is {}: {e}",
                    column.name,
                    column.data_type.sql_name(),
                    array.data_type()
                ))
            })?
        };
        if let ColumnType::Varchar(Some(limit)) = column.data_type {
            check_length(&array, limit as usize).map_err(|row| {
                SqlError::StringTooLong(format!(
                    "value too long for type character varying({limit}) in column \"{}\" of relation \"{name}\" (row {})",
                    column.name,
                    first_row + row
                ))
            })?;
        }
        arrays.push(array);
    }
    RecordBatch::try_new(schema.clone(), arrays).map_err(|e| SqlError::Internal(e.to_string()))
}

fn first_null(array: &dyn Array) -> Option<usize> {
    if array.null_count() == 0 {
        return None;
    }
    (0..array.len()).find(|&i| array.is_null(i))
}

/// Returns the first row whose string is longer than `limit` characters.
fn check_length(array: &ArrayRef, limit: usize) -> Result<(), usize> {
    let strings = array.as_string::<i32>();
    match strings
        .iter()
        .position(|value| value.is_some_and(|s| s.chars().count() > limit))
    {
        Some(row) => Err(row),
        None => Ok(()),
    }
}

//! The online side of feature groups: applying offline commits to the online store, backfill and
//! recovery, and `online.<group>` as a table whose key lookups are point gets.
//!
//! The offline Delta log is the ingestion log. A write commits to the offline store first; then,
//! under the same table writer lock, its rows are applied to the online store together with the
//! commit's version in one synced RocksDB batch. Which row wins per key depends only on (event
//! time, sequence), so applying a commit again is harmless: after a crash, [`reconcile`] replays
//! the commits the online store has not recorded. See docs/ARCHITECTURE.md, "Crash safety".

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, new_empty_array};
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{
    Column as ColumnRef, DFSchema, DataFusionError, ParamValues, Result as DfResult, ScalarValue,
};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::{SessionContext, col, lit};
use futures::StreamExt;
use itertools::Itertools;
use quiver_catalog::{Column, Relation};
use quiver_storage::{OfflineStore, OnlineLayout, OnlineStore, SEQUENCE_COLUMN, StorageResult};

use crate::Engine;
use crate::error::{SqlError, SqlResult};
pub(crate) use crate::online_group::CommitChange;
use crate::online_group::{OnlineCommand, OnlineTableSpec};
use crate::types::arrow_schema;

/// The schema that serves the online store of a project's feature groups.
pub const ONLINE_SCHEMA: &str = "online";

/// At most this many keys in one lookup (the product of the key columns' value lists); more is
/// a scan with the key filters applied to its rows.
const MAX_LOOKUP_KEYS: usize = 100_000;

/// How the online store sees a feature group version; `None` for a plain table.
pub fn layout(relation: &Relation) -> SqlResult<Option<OnlineLayout>> {
    let Some(spec) = relation.feature_group() else {
        return Ok(None);
    };
    layout_of(
        &relation.columns,
        &relation.primary_key,
        spec.event_time.as_deref(),
    )
    .map(Some)
}

/// The online layout of a feature group with these columns, primary key and event time.
pub(crate) fn layout_of(
    columns: &[Column],
    primary_key: &[String],
    event_time: Option<&str>,
) -> SqlResult<OnlineLayout> {
    let position = |name: &str| columns.iter().position(|c| c.name == name);
    Ok(OnlineLayout::new(
        arrow_schema(columns),
        primary_key.iter().filter_map(|k| position(k)).collect(),
        event_time.and_then(position),
    )?)
}

/// Applies the rows of offline commit `version` (batches of the relation's columns, in commit
/// order) to the online store. Only the last batch records the version, synced: a crash before
/// it leaves the commit unrecorded, and recovery applies it again.
pub async fn apply_commit(
    online: &OnlineStore,
    oid: u32,
    layout: &OnlineLayout,
    batches: Vec<RecordBatch>,
    version: u64,
) -> StorageResult<()> {
    let base = (version as i64) << 32;
    let mut next = 0i64;
    let last = batches.len().saturating_sub(1);
    for (index, batch) in batches.into_iter().enumerate() {
        let rows = batch.num_rows() as i64;
        let sequences = (next..next + rows).map(|i| base | i).collect();
        next += rows;
        let applied = (index == last).then_some(version);
        online.apply(oid, layout, batch, sequences, applied).await?;
    }
    Ok(())
}

/// After offline commit `version` of `relation`, under the table's writer lock: what the commit
/// does to the online store, applied here on a single node (when the group has online data) or
/// proposed to the data group on a cluster member, before the statement is acknowledged.
pub(crate) async fn after_commit(
    engine: &Engine,
    relation: &Relation,
    version: u64,
    change: CommitChange,
) -> SqlResult<()> {
    if let Some(group) = engine.online_group() {
        let catalog = engine.catalog.snapshot();
        return group.commit(&catalog, relation, version, change).await;
    }
    let oid = relation.oid;
    let Some(layout) = layout(relation)?.filter(|_| engine.online.has_table(oid)) else {
        return Ok(());
    };
    match change {
        CommitChange::Rows(rows) => {
            apply_commit(&engine.online, oid, &layout, rows, version).await?;
        }
        CommitChange::Deleted(keys) => {
            let Some(first) = keys.first() else {
                return Ok(());
            };
            let keys = datafusion::arrow::compute::concat_batches(first.schema_ref(), &keys)
                .map_err(|e| SqlError::Internal(e.to_string()))?;
            engine
                .online
                .delete(oid, &layout, keys.columns().to_vec(), version)
                .await?;
        }
    }
    Ok(())
}

/// Gives `relation` (a feature group going online) its online data: built here from the offline
/// history on a single node; on a cluster member, by every node when the data group applies
/// the proposal.
pub(crate) async fn enable(engine: &Engine, relation: &Relation) -> SqlResult<()> {
    let Some(group) = engine.online_group() else {
        return backfill(engine, relation).await;
    };
    let spec = OnlineTableSpec::of(relation).ok_or_else(|| not_a_feature_group(relation))?;
    let version = engine.offline.version(relation.oid).await?;
    let command = OnlineCommand::Enable {
        table: relation.oid,
        spec,
        version,
    };
    group.propose(&engine.catalog.snapshot(), command).await
}

/// Drops the online data of `relation` (gone, or no longer online): here, or on every node of a
/// cluster.
pub(crate) async fn disable(engine: &Engine, relation: &Relation) -> SqlResult<()> {
    match engine.online_group() {
        Some(group) if relation.feature_group().is_some() => {
            let command = OnlineCommand::Disable {
                table: relation.oid,
            };
            group.propose(&engine.catalog.snapshot(), command).await
        }
        Some(_) => Ok(()),
        None => Ok(engine.online.drop_table(relation.oid).await?),
    }
}

fn not_a_feature_group(relation: &Relation) -> SqlError {
    SqlError::NotSupported(format!(
        "\"{}\" is not a feature group",
        relation.qualified_name()
    ))
}

/// Fills the online table of `relation` from its offline history: the latest row per key of the
/// current version, and then records that version. Creates the online table first, so commits
/// made meanwhile are applied by their writers too (applying twice is harmless).
async fn backfill(engine: &Engine, relation: &Relation) -> SqlResult<()> {
    let layout = layout(relation)?.ok_or_else(|| not_a_feature_group(relation))?;
    engine.online.create_table(relation.oid).await?;
    let columns = column_names(&relation.columns);
    replay(
        &engine.offline,
        &engine.online,
        relation.oid,
        &columns,
        &layout,
        None,
        None,
    )
    .await
}

/// The names of `columns`, in order.
pub(crate) fn column_names(columns: &[Column]) -> Vec<String> {
    columns.iter().map(|c| c.name.clone()).collect()
}

/// Applies to online table `oid` the rows of its offline table at version `at` (the newest when
/// `None`) whose sequence is past commit `after` (all of them for `None`), then records that
/// version as applied. `columns` are the online layout's columns, in order.
pub(crate) async fn replay(
    offline: &OfflineStore,
    online: &OnlineStore,
    oid: u32,
    columns: &[String],
    layout: &OnlineLayout,
    after: Option<u64>,
    at: Option<u64>,
) -> SqlResult<()> {
    let version = match at {
        Some(version) => version,
        None => offline.version(oid).await?,
    };
    let context = SessionContext::new();
    let provider = offline
        .table_provider(oid, Some(version), &context.state())
        .await?;
    let stored = provider.schema();
    let mut frame = context.read_table(provider)?;
    if let Some(after) = after {
        frame = frame.filter(col(SEQUENCE_COLUMN).gt_eq(lit(((after + 1) as i64) << 32)))?;
    }
    let mut selection: Vec<Expr> = columns.iter().map(|c| col(c.as_str())).collect();
    let has_sequence = stored.index_of(SEQUENCE_COLUMN).is_ok();
    if has_sequence {
        selection.push(col(SEQUENCE_COLUMN));
    }
    let mut stream = frame.select(selection)?.execute_stream().await?;
    let width = columns.len();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let sequences = if has_sequence {
            batch
                .column(width)
                .as_primitive::<Int64Type>()
                .iter()
                .map(|s| s.unwrap_or(0))
                .collect()
        } else {
            // Rows written before sequences existed: commit order is unknown, all tie.
            vec![0; batch.num_rows()]
        };
        let rows = batch
            .project(&(0..width).collect::<Vec<_>>())
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        online.apply(oid, layout, rows, sequences, None).await?;
    }
    online.set_applied_version(oid, version).await?;
    Ok(())
}

/// Brings the online store in line with the catalog and the offline store at start: drops online
/// tables of relations that are gone or not online, backfills online groups that have none, and
/// replays the commits an online table has not recorded (rebuilding it when one of them is a
/// DELETE, whose keys the offline rows no longer tell).
pub async fn reconcile(engine: &Engine) -> SqlResult<()> {
    let snapshot = engine.catalog.snapshot();
    for oid in engine.online.tables().await? {
        let online = snapshot
            .relation(oid)
            .and_then(|r| r.feature_group())
            .is_some_and(|spec| spec.options.online);
        if !online {
            tracing::info!(oid, "dropping online data of a relation that is not online");
            engine.online.drop_table(oid).await?;
        }
    }
    for relation in snapshot.all_relations() {
        let Some(spec) = relation.feature_group() else {
            continue;
        };
        if !spec.options.online {
            continue;
        }
        let Some(layout) = layout(relation)? else {
            continue;
        };
        let applied = match engine.online.has_table(relation.oid) {
            true => engine.online.applied_version(relation.oid).await?,
            false => None,
        };
        let Some(applied) = applied else {
            tracing::info!(relation = %relation.qualified_name(), "building the online table");
            backfill(engine, relation).await?;
            continue;
        };
        let pending = engine
            .offline
            .operations_after(relation.oid, applied)
            .await?;
        if pending.is_empty() {
            continue;
        }
        if pending.iter().any(|op| op == "DELETE") {
            tracing::info!(relation = %relation.qualified_name(), "rebuilding the online table after an interrupted DELETE");
            backfill(engine, relation).await?;
        } else {
            tracing::info!(relation = %relation.qualified_name(), commits = pending.len(), "applying offline commits to the online store");
            let columns = column_names(&relation.columns);
            replay(
                &engine.offline,
                &engine.online,
                relation.oid,
                &columns,
                &layout,
                Some(applied),
                None,
            )
            .await?;
        }
    }
    Ok(())
}

/// `online.<group>`: the latest row per key of an online feature group version.
#[derive(Debug, Clone)]
pub struct OnlineTable {
    relation: Relation,
    layout: OnlineLayout,
    online: Arc<OnlineStore>,
}

impl OnlineTable {
    /// The online table of `relation`, which must be an online feature group.
    pub fn new(relation: Relation, online: Arc<OnlineStore>) -> SqlResult<Self> {
        let name = relation.qualified_name();
        let is_online = relation
            .feature_group()
            .is_some_and(|spec| spec.options.online);
        let layout = layout(&relation)?.filter(|_| is_online).ok_or_else(|| {
            SqlError::NotSupported(format!(
                "\"{name}\" is not online; enable it with ALTER FEATURE GROUP {} SET (online = true)",
                relation.name
            ))
        })?;
        Ok(OnlineTable {
            relation,
            layout,
            online,
        })
    }

    /// The feature group version.
    pub fn relation(&self) -> &Relation {
        &self.relation
    }

    /// How the online store sees the group.
    pub fn layout(&self) -> &OnlineLayout {
        &self.layout
    }

    /// The oldest event time (microseconds since the epoch) still served, by the group's ttl.
    pub fn min_age(&self) -> Option<i64> {
        min_age(self.ttl_seconds())
    }

    fn ttl_seconds(&self) -> Option<i64> {
        self.relation.feature_group()?.options.ttl_seconds
    }
}

/// The oldest event time (microseconds since the epoch) a ttl of `ttl_seconds` serves now.
fn min_age(ttl_seconds: Option<i64>) -> Option<i64> {
    let now = chrono::Utc::now().timestamp_micros();
    Some(now.saturating_sub(ttl_seconds?.saturating_mul(1_000_000)))
}

/// The name of key column `index` of the layout.
fn key_name(layout: &OnlineLayout, index: usize) -> &str {
    layout.schema().field(layout.key_columns()[index]).name()
}

/// The keys the filters pin down, one array per key column, when every key column is restricted
/// to a list of known values and their combinations are few enough for point gets.
fn lookup_keys(layout: &OnlineLayout, filters: &[Expr]) -> DfResult<Option<Vec<ArrayRef>>> {
    let mut lists: Vec<Vec<ScalarValue>> = Vec::new();
    for index in 0..layout.key_columns().len() {
        let name = key_name(layout, index);
        let Some(values) = filters.iter().find_map(|f| key_values(f, name)) else {
            return Ok(None);
        };
        lists.push(values);
    }
    let total = lists.iter().try_fold(1usize, |n, l| n.checked_mul(l.len()));
    if total.is_none_or(|n| n > MAX_LOOKUP_KEYS) {
        return Ok(None);
    }
    key_arrays(layout, lists).map(Some)
}

/// Whether the filters pin every key column, some with parameters whose values are not known
/// yet: the lookup is then planned before them and its keys read when they are bound.
fn pins_keys_by_parameters(layout: &OnlineLayout, filters: &[Expr]) -> bool {
    let pinned = (0..layout.key_columns().len())
        .all(|index| filters.iter().any(|f| pins_key(f, key_name(layout, index))));
    pinned
        && filters.iter().any(|f| {
            f.exists(|e| Ok(matches!(e, Expr::Placeholder(_))))
                .unwrap_or(false)
        })
}

/// The keys to look up given the values of each key column: every combination of one value per
/// column (NULLs never match a key), cast to the key columns' types, one array per key column.
pub(crate) fn key_arrays(
    layout: &OnlineLayout,
    lists: Vec<Vec<ScalarValue>>,
) -> DfResult<Vec<ArrayRef>> {
    let targets = layout
        .key_columns()
        .iter()
        .map(|&index| layout.schema().field(index).data_type());
    // One value per key column, the serving case: no combinations to make, and no cast of a
    // value that has the column's type already (a scalar cast goes through a one-row array).
    if lists.iter().all(|values| values.len() == 1) {
        let values: Vec<ScalarValue> = lists.into_iter().flatten().collect();
        let matches_nothing = values.iter().any(ScalarValue::is_null);
        return values
            .into_iter()
            .zip(targets)
            .map(|(value, target)| match value {
                _ if matches_nothing => Ok(new_empty_array(target)),
                value if &value.data_type() == target => value.to_array(),
                value => value.cast_to(target)?.to_array(),
            })
            .collect();
    }
    let lists: Vec<Vec<ScalarValue>> = lists
        .into_iter()
        .map(|values| values.into_iter().filter(|v| !v.is_null()).collect())
        .collect();
    let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::new(); lists.len()];
    for combination in lists.iter().map(|l| l.iter()).multi_cartesian_product() {
        for (column, value) in combination.into_iter().enumerate() {
            columns[column].push(value.clone());
        }
    }
    columns
        .into_iter()
        .zip(targets)
        .map(|(values, target)| {
            if values.is_empty() {
                return Ok(new_empty_array(target));
            }
            let values = values
                .into_iter()
                .map(|v| v.cast_to(target))
                .collect::<DfResult<Vec<_>>>()?;
            ScalarValue::iter_to_array(values)
        })
        .collect()
}

/// The elements of a list value (`None` if it is not a list; no elements if it is NULL).
pub(crate) fn list_elements(value: &ScalarValue) -> Option<Vec<ScalarValue>> {
    if !matches!(
        value,
        ScalarValue::List(_) | ScalarValue::LargeList(_) | ScalarValue::FixedSizeList(_)
    ) {
        return None;
    }
    let array = value.to_array().ok()?;
    let mut rows = ScalarValue::convert_array_to_scalar_vec(array.as_ref()).ok()?;
    Some(rows.pop().flatten().unwrap_or_default())
}

/// The values a filter restricts column `name` to: `name = v`, `name IN (v, ...)`, a disjunction
/// of those, or `name = ANY(array)` (planned as `array_has(array, name)`), where each value is a
/// constant that `value` reads and each array one that `elements` reads.
fn restricted_values<T>(
    filter: &Expr,
    name: &str,
    value: &impl Fn(&Expr) -> Option<T>,
    elements: &impl Fn(&Expr) -> Option<Vec<T>>,
) -> Option<Vec<T>> {
    let is_key = |e: &Expr| matches!(e, Expr::Column(c) if c.name == name);
    match filter {
        // The optimizer turns short IN lists into `k = a OR k = b OR ...`.
        Expr::BinaryExpr(binary) if binary.op == Operator::Or => {
            let mut values = restricted_values(&binary.left, name, value, elements)?;
            values.extend(restricted_values(&binary.right, name, value, elements)?);
            Some(values)
        }
        Expr::BinaryExpr(binary) if binary.op == Operator::Eq => {
            match (binary.left.as_ref(), binary.right.as_ref()) {
                (l, other) | (other, l) if is_key(l) => value(other).map(|v| vec![v]),
                _ => None,
            }
        }
        Expr::InList(in_list) if !in_list.negated && is_key(&in_list.expr) => {
            in_list.list.iter().map(value).collect()
        }
        Expr::ScalarFunction(call) if call.name() == "array_has" && call.args.len() == 2 => {
            match (&call.args[0], &call.args[1]) {
                (array, key) if is_key(key) => elements(array),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The values a filter restricts column `name` to, when they are known: literals, or casts of
/// literals (a prepared statement's parameters, substituted after optimisation, stay under the
/// casts the optimiser would have folded).
fn key_values(filter: &Expr, name: &str) -> Option<Vec<ScalarValue>> {
    restricted_values(filter, name, &constant_value, &|array| {
        list_elements(&constant_value(array)?)
    })
}

/// Whether a filter restricts column `name` to values known when the query runs: constants,
/// or parameters of a prepared statement optimised before its values are given.
fn pins_key(filter: &Expr, name: &str) -> bool {
    let known = |e: &Expr| is_constant(e).then_some(());
    restricted_values(filter, name, &known, &|array| {
        known(array).map(|()| vec![()])
    })
    .is_some()
}

/// A literal, or a cast of one, evaluated.
fn constant_value(expr: &Expr) -> Option<ScalarValue> {
    match expr {
        Expr::Literal(value, _) => Some(value.clone()),
        Expr::Cast(cast) => constant_value(&cast.expr)?
            .cast_to(cast.field.data_type())
            .ok(),
        Expr::TryCast(cast) => {
            let target = cast.field.data_type();
            Some(
                constant_value(&cast.expr)?
                    .cast_to(target)
                    .unwrap_or(ScalarValue::try_from(target).ok()?),
            )
        }
        _ => None,
    }
}

/// A literal or a parameter, possibly cast.
fn is_constant(expr: &Expr) -> bool {
    match expr {
        Expr::Literal(..) | Expr::Placeholder(_) => true,
        Expr::Cast(cast) => is_constant(&cast.expr),
        Expr::TryCast(cast) => is_constant(&cast.expr),
        _ => false,
    }
}

#[async_trait]
impl TableProvider for OnlineTable {
    fn schema(&self) -> SchemaRef {
        self.layout.schema().clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Key restrictions are answered exactly by the lookup when they cover the whole key; every
    /// other filter is applied above the scan.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        let names: Vec<&str> = (0..self.layout.key_columns().len())
            .map(|i| key_name(&self.layout, i))
            .collect();
        let covered = names
            .iter()
            .all(|name| filters.iter().any(|f| pins_key(f, name)));
        Ok(filters
            .iter()
            .map(|f| {
                let pins_a_key = names.iter().any(|name| pins_key(f, name));
                if covered && pins_a_key {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let exec = |access, projection| {
            Arc::new(OnlineExec::new(
                self.relation.qualified_name(),
                self.relation.oid,
                self.layout.clone(),
                self.online.clone(),
                access,
                projection,
                self.ttl_seconds(),
            ))
        };
        if let Some(keys) = lookup_keys(&self.layout, filters)? {
            return Ok(exec(Access::Lookup(keys), projection.cloned()));
        }
        if pins_keys_by_parameters(&self.layout, filters) {
            return Ok(exec(
                Access::Deferred(filters.to_vec()),
                projection.cloned(),
            ));
        }
        let Some(predicate) = datafusion::logical_expr::utils::conjunction(filters.to_vec()) else {
            return Ok(exec(Access::Scan, projection.cloned()));
        };
        // The filters were taken as exact, but they pin more keys than one lookup gets: they
        // are applied to a scan instead.
        let predicate = predicate
            .transform(|e| {
                Ok(match e {
                    Expr::Column(c) => {
                        Transformed::yes(Expr::Column(ColumnRef::new_unqualified(c.name)))
                    }
                    other => Transformed::no(other),
                })
            })?
            .data;
        let schema = DFSchema::try_from(self.layout.schema().as_ref().clone())?;
        let predicate = state.create_physical_expr(predicate, &schema)?;
        let filter = FilterExecBuilder::new(predicate, exec(Access::Scan, None))
            .apply_projection(projection.cloned())?
            .build()?;
        Ok(Arc::new(filter))
    }
}

/// How [`OnlineExec`] reads.
#[derive(Debug, Clone)]
enum Access {
    /// Point gets of these keys (one array per key column).
    Lookup(Vec<ArrayRef>),
    /// Point gets of the keys these filters pin once their parameters are bound
    /// ([`OnlineExec::bind`]): a prepared statement's plan, kept for its executions.
    Deferred(Vec<Expr>),
    /// Every row, in key order.
    Scan,
}

/// Reads the online store: point gets for a key lookup, or a scan of the table.
#[derive(Debug, Clone)]
pub struct OnlineExec {
    name: String,
    oid: u32,
    layout: OnlineLayout,
    online: Arc<OnlineStore>,
    access: Access,
    projection: Option<Vec<usize>>,
    /// The group's ttl, applied when the plan runs (a plan may run long after it was made).
    ttl_seconds: Option<i64>,
    properties: Arc<PlanProperties>,
}

impl OnlineExec {
    fn new(
        name: String,
        oid: u32,
        layout: OnlineLayout,
        online: Arc<OnlineStore>,
        access: Access,
        projection: Option<Vec<usize>>,
        ttl_seconds: Option<i64>,
    ) -> Self {
        let schema = match &projection {
            Some(p) => Arc::new(
                layout
                    .schema()
                    .project(p)
                    .unwrap_or_else(|_| (**layout.schema()).clone()),
            ),
            None => layout.schema().clone(),
        };
        let properties = leaf_properties(schema);
        OnlineExec {
            name,
            oid,
            layout,
            online,
            access,
            projection,
            ttl_seconds,
            properties,
        }
    }

    /// Whether its keys wait for a prepared statement's parameters ([`OnlineExec::bind`]).
    pub(crate) fn is_deferred(&self) -> bool {
        matches!(self.access, Access::Deferred(_))
    }

    /// This lookup with its parameters bound to `params`, if it waits for them: `None` when the
    /// values pin more keys than one lookup gets, and the statement must be planned with them.
    pub(crate) fn bind(&self, params: &ParamValues) -> DfResult<Option<OnlineExec>> {
        let Access::Deferred(filters) = &self.access else {
            return Ok(Some(self.clone()));
        };
        let filters = filters
            .iter()
            .map(|filter| {
                crate::session::with_parameter_values(filter.clone(), params).map(|t| t.data)
            })
            .collect::<DfResult<Vec<_>>>()?;
        Ok(lookup_keys(&self.layout, &filters)?.map(|keys| OnlineExec {
            access: Access::Lookup(keys),
            ..self.clone()
        }))
    }
}

impl DisplayAs for OnlineExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.access {
            Access::Lookup(keys) => write!(
                f,
                "OnlineLookupExec: table={}, keys={}",
                self.name,
                keys.first().map_or(0, |k| k.len())
            ),
            Access::Deferred(_) => {
                write!(f, "OnlineLookupExec: table={}, keys=parameters", self.name)
            }
            Access::Scan => write!(f, "OnlineScanExec: table={}", self.name),
        }
    }
}

impl ExecutionPlan for OnlineExec {
    fn name(&self) -> &str {
        match self.access {
            Access::Lookup(_) | Access::Deferred(_) => "OnlineLookupExec",
            Access::Scan => "OnlineScanExec",
        }
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
        childless(self, children)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let online = self.online.clone();
        let layout = self.layout.clone();
        let oid = self.oid;
        let access = self.access.clone();
        let projection = self.projection.clone();
        let min_age = min_age(self.ttl_seconds);
        let batches = async move {
            let batches = match access {
                Access::Deferred(_) => {
                    return Err(DataFusionError::Internal(
                        "an online lookup ran before its parameters were bound".into(),
                    ));
                }
                Access::Lookup(keys) => vec![
                    online
                        .get(oid, &layout, keys, min_age)
                        .await
                        .map_err(storage_error)?,
                ],
                Access::Scan => online
                    .scan(oid, &layout, min_age)
                    .await
                    .map_err(storage_error)?,
            };
            batches
                .into_iter()
                .map(|b| match &projection {
                    Some(p) => b.project(p).map_err(DataFusionError::from),
                    None => Ok(b),
                })
                .collect::<DfResult<Vec<_>>>()
        };
        let stream = futures::stream::once(batches)
            .map(|result| match result {
                Ok(batches) => futures::stream::iter(batches.into_iter().map(Ok)).left_stream(),
                Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
            })
            .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.properties.eq_properties.schema().clone(),
            stream,
        )))
    }
}

/// The properties of a plan node with no input that yields one partition, all at once.
pub(crate) fn leaf_properties(schema: SchemaRef) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(1),
        EmissionType::Final,
        Boundedness::Bounded,
    ))
}

/// `with_new_children` of a plan node that has none.
pub(crate) fn childless(
    plan: Arc<dyn ExecutionPlan>,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    if children.is_empty() {
        Ok(plan)
    } else {
        Err(DataFusionError::Internal(format!(
            "{} has no children",
            plan.name()
        )))
    }
}

fn storage_error(e: quiver_storage::StorageError) -> DataFusionError {
    DataFusionError::External(Box::new(SqlError::from(e)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn keys(lists: Vec<Vec<ScalarValue>>) -> Vec<ArrayRef> {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
            Field::new("region", DataType::Utf8, false),
        ]);
        let layout = OnlineLayout::new(Arc::new(schema), vec![0, 2], None).unwrap();
        key_arrays(&layout, lists).unwrap()
    }

    #[test]
    fn key_values_become_key_arrays_of_the_key_types() {
        // One value per column, one of them cast (an int4 parameter for a bigint key).
        let one = keys(vec![
            vec![ScalarValue::Int32(Some(5))],
            vec![ScalarValue::from("eu")],
        ]);
        assert_eq!(one[0].as_ref(), &Int64Array::from(vec![5]) as &dyn Array);
        assert_eq!(
            one[1].as_ref(),
            &StringArray::from(vec!["eu"]) as &dyn Array
        );
        // A NULL in any key column matches nothing.
        let null = keys(vec![
            vec![ScalarValue::Int64(Some(5))],
            vec![ScalarValue::Utf8(None)],
        ]);
        assert!(null.iter().all(|a| a.is_empty()) && null.len() == 2);
        // Several values: every combination, NULLs left out.
        let many = keys(vec![
            vec![
                ScalarValue::Int64(Some(1)),
                ScalarValue::Int64(None),
                ScalarValue::Int64(Some(2)),
            ],
            vec![ScalarValue::from("eu")],
        ]);
        assert_eq!(
            many[0].as_ref(),
            &Int64Array::from(vec![1, 2]) as &dyn Array
        );
        assert_eq!(
            many[1].as_ref(),
            &StringArray::from(vec!["eu", "eu"]) as &dyn Array
        );
    }
}

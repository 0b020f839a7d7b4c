//! Physical plans kept by prepared statements.
//!
//! A prepared query optimised once ([`crate::session::Prepared`]) still paid DataFusion's physical
//! planning at every execution: half of a prepared `serve` call's server time, most of it the
//! projections of a wide feature vector and their equivalence properties. When the optimised plan
//! reads only what is read as the plan runs (online store lookups, constants), it is planned
//! physically once, its key parameters left unbound ([`OnlineExec`] defers them), and kept. Each
//! execution binds its parameter values into a copy of the kept plan whose nodes have their
//! execution state reset (a hash join's build side, a repartition's channels), and runs that.
//!
//! A plan that reads offline files is planned at each execution as before: its scans list the
//! files of the table version current when it is planned. A kept plan is dropped when the catalog
//! or the session's settings change, and a statement whose parameters sit anywhere but an online
//! key filter (physical planning refuses the placeholder) is never kept.

use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, ParamValues, Result as DfResult};
use datafusion::datasource::source_as_provider;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::projection::Projector;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::asof::AsofJoin;
use crate::models::LogPredictions;
use crate::online::{OnlineExec, OnlineTable};

/// A physical plan ready to run again, and what it was planned against.
#[derive(Debug)]
pub(crate) struct KeptPlan {
    pub plan: Arc<dyn ExecutionPlan>,
    pub task: Arc<TaskContext>,
    /// The result columns, as the logical plan names them.
    pub schema: SchemaRef,
    /// The catalog's applied commands when it was planned: any DDL since plans it again.
    catalog_commands: u64,
    /// The session's settings generation when it was planned.
    settings_generation: u64,
}

/// What a prepared statement knows of its physical plan.
#[derive(Debug, Default)]
enum State {
    /// Not planned yet, or dropped after a catalog or settings change.
    #[default]
    Unplanned,
    Kept(Arc<KeptPlan>),
    /// Planning it without its parameters failed, or it cannot run twice: planned per execution.
    Never,
}

/// What a prepared statement's execution runs ([`PlanCache::next`]).
pub(crate) enum Next {
    /// The kept plan.
    Kept(Arc<KeptPlan>),
    /// A plan made now without parameter values, then kept.
    PlanAndKeep,
    /// A plan made with this execution's values, as without a cache.
    PlanPerExecution,
}

/// A prepared statement's kept physical plan, shared by the statement's portals.
#[derive(Debug, Default)]
pub(crate) struct PlanCache(Mutex<State>);

impl PlanCache {
    /// A cache for a prepared statement's optimised plan, if the plan can be kept at all.
    pub(crate) fn for_plan(optimized: &LogicalPlan) -> Option<Arc<PlanCache>> {
        reads_at_execution(optimized).then(|| Arc::new(PlanCache::default()))
    }

    /// What the statement's next execution runs, given the catalog and settings it runs under.
    pub(crate) fn next(&self, catalog_commands: u64, settings_generation: u64) -> Next {
        let Ok(state) = self.0.lock() else {
            return Next::PlanPerExecution;
        };
        match &*state {
            State::Never => Next::PlanPerExecution,
            State::Kept(kept)
                if kept.catalog_commands == catalog_commands
                    && kept.settings_generation == settings_generation =>
            {
                Next::Kept(kept.clone())
            }
            _ => Next::PlanAndKeep,
        }
    }

    /// Keeps a plan made without parameter values, if it can run again; otherwise remembers
    /// that the statement is planned per execution.
    pub(crate) fn keep(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
        schema: SchemaRef,
        catalog_commands: u64,
        settings_generation: u64,
    ) -> Option<Arc<KeptPlan>> {
        let kept = rerunnable(&plan).then(|| {
            Arc::new(KeptPlan {
                plan: with_kept_projections(plan),
                task,
                schema,
                catalog_commands,
                settings_generation,
            })
        });
        self.set(match &kept {
            Some(kept) => State::Kept(kept.clone()),
            None => State::Never,
        });
        kept
    }

    #[cfg(test)]
    pub(crate) fn is_kept(&self) -> bool {
        matches!(self.0.lock().as_deref(), Ok(State::Kept(_)))
    }

    /// Remembers that the statement is planned per execution.
    pub(crate) fn never(&self) {
        self.set(State::Never);
    }

    fn set(&self, state: State) {
        if let Ok(mut current) = self.0.lock() {
            *current = state;
        }
    }
}

/// Whether every relation a plan reads is read when the plan runs: online tables (their point
/// gets and scans read RocksDB at execution) and constants. Offline scans list their files when
/// planned, system catalog tables are snapshots, and extension nodes other than Quiver's own
/// (ASOF join, prediction log) are not known to run twice.
fn reads_at_execution(plan: &LogicalPlan) -> bool {
    let mut reads = true;
    let walked = plan.apply_with_subqueries(|node| {
        reads = match node {
            LogicalPlan::TableScan(scan) => source_as_provider(&scan.source)
                .ok()
                .is_some_and(|provider| provider.downcast_ref::<OnlineTable>().is_some()),
            LogicalPlan::Extension(extension) => {
                let node = extension.node.as_any();
                node.is::<AsofJoin>() || node.is::<LogPredictions>()
            }
            // Its work table belongs to one execution. (Writes, DDL and EXPLAIN are never
            // optimised once, so never come here.)
            LogicalPlan::RecursiveQuery(_) => false,
            _ => true,
        };
        Ok(match reads {
            true => TreeNodeRecursion::Continue,
            false => TreeNodeRecursion::Stop,
        })
    });
    walked.is_ok() && reads
}

/// Whether a physical plan can run again after its nodes' states are reset: no node produces a
/// dynamic filter, which another node may hold past the reset (a hash join's, pushed into a
/// filter above its probe side).
fn rerunnable(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut dynamic = false;
    let _ = plan.apply(|node| {
        dynamic = !node.dynamic_expressions_produced().is_empty();
        Ok(match dynamic {
            true => TreeNodeRecursion::Stop,
            false => TreeNodeRecursion::Continue,
        })
    });
    !dynamic
}

/// The plan with each projection replaced by a [`KeptProjectionExec`] (when its projector can be
/// made; otherwise it stays as it is).
fn with_kept_projections(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    let replaced = Arc::clone(&plan).transform_up(|node| {
        let Some(projection) = node.downcast_ref::<ProjectionExec>() else {
            return Ok(Transformed::no(node));
        };
        match KeptProjectionExec::of(projection) {
            Ok(kept) => Ok(Transformed::yes(Arc::new(kept) as Arc<dyn ExecutionPlan>)),
            Err(e) => {
                tracing::debug!(error = %e, "a kept plan's projection stays a ProjectionExec");
                Ok(Transformed::no(node))
            }
        }
    });
    match replaced {
        Ok(replaced) => replaced.data,
        Err(_) => plan,
    }
}

/// A projection in a kept plan. DataFusion's `ProjectionExec` makes each expression's metrics
/// at every execution, labels formatted from the expressions: for a feature vector of fifty
/// features that was a sixth of a prepared `serve` call's server time. A kept plan is never
/// explained nor analysed, so its projections evaluate their expressions without metrics, with
/// a projector made once.
#[derive(Debug)]
struct KeptProjectionExec {
    input: Arc<dyn ExecutionPlan>,
    projector: Arc<Projector>,
    /// The replaced `ProjectionExec`'s: same expressions, same input.
    properties: Arc<PlanProperties>,
}

impl KeptProjectionExec {
    fn of(projection: &ProjectionExec) -> DfResult<KeptProjectionExec> {
        let input = Arc::clone(projection.input());
        // The projection's own schema gives the fields' metadata, as ProjectionExec keeps it.
        let projector = projection
            .projection_expr()
            .make_projector_with_schema_metadata(&input.schema(), &projection.schema())?;
        Ok(KeptProjectionExec {
            input,
            projector: Arc::new(projector),
            properties: Arc::clone(projection.properties()),
        })
    }
}

impl DisplayAs for KeptProjectionExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let columns: Vec<&str> = self
            .projector
            .projection()
            .as_ref()
            .iter()
            .map(|e| e.alias.as_str())
            .collect();
        write!(f, "KeptProjectionExec: columns=[{}]", columns.join(", "))
    }
}

impl ExecutionPlan for KeptProjectionExec {
    fn name(&self) -> &str {
        "KeptProjectionExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        datafusion::physical_plan::apply_expression_roots(
            self.projector.projection().as_ref().iter().map(|p| &p.expr),
            f,
        )
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
        )
    }

    /// Binding a kept plan gives each node new children with the old ones' schemas and
    /// properties, so this node's stay as they are.
    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "KeptProjectionExec takes one child".into(),
            ));
        }
        Ok(Arc::new(KeptProjectionExec {
            input: children.swap_remove(0),
            projector: Arc::clone(&self.projector),
            properties: Arc::clone(&self.properties),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let projector = Arc::clone(&self.projector);
        let projected = input.map(move |batch| projector.project_batch(&batch?));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(self.projector.output_schema()),
            projected,
        )))
    }
}

/// A copy of a kept plan ready to run with these parameter values: every node's execution state
/// reset and every deferred online lookup given its keys. `None` when the values pin more keys
/// than one lookup gets: the statement is then planned with its values, as without a kept plan.
pub(crate) fn bind(
    plan: &Arc<dyn ExecutionPlan>,
    params: Option<&ParamValues>,
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let no_params = ParamValues::List(Vec::new());
    let params = params.unwrap_or(&no_params);
    let mut unbound = false;
    let bound = Arc::clone(plan).transform_up(|node| {
        let Some(online) = node.downcast_ref::<OnlineExec>() else {
            return Ok(Transformed::yes(node.reset_state()?));
        };
        if !online.is_deferred() {
            // Stateless, and its keys are in the plan.
            return Ok(Transformed::no(node));
        }
        match online.bind(params)? {
            Some(bound) => Ok(Transformed::yes(Arc::new(bound) as Arc<dyn ExecutionPlan>)),
            None => {
                unbound = true;
                Ok(Transformed::new(node, false, TreeNodeRecursion::Stop))
            }
        }
    })?;
    Ok((!unbound).then_some(bound.data))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::display::array_value_to_string;
    use datafusion::common::ScalarValue;
    use datafusion::physical_plan::collect;
    use futures::TryStreamExt;

    use super::*;

    use crate::parser::Statement;
    use crate::session::{Output, Prepared, Session};
    use crate::{Engine, EngineOptions};

    fn statement(sql: &str) -> Statement {
        crate::parser::parse(sql).unwrap().remove(0)
    }

    /// Each row's values as text joined by ", " (NULL as "NULL").
    async fn rows(output: Output) -> Vec<String> {
        let Output::Rows { stream } = output else {
            panic!("no rows");
        };
        let batches: Vec<_> = stream.try_collect().await.unwrap();
        let mut rows = Vec::new();
        for batch in batches {
            for row in 0..batch.num_rows() {
                let values: Vec<String> = batch
                    .columns()
                    .iter()
                    .map(|column| match column.is_null(row) {
                        true => "NULL".to_string(),
                        false => array_value_to_string(column, row).unwrap(),
                    })
                    .collect();
                rows.push(values.join(", "));
            }
        }
        rows
    }

    async fn run(session: &mut Session, sql: &str) {
        session.run(statement(sql)).await.unwrap();
    }

    async fn execute(session: &mut Session, prepared: &Prepared, params: &[i64]) -> Vec<String> {
        let params: Vec<ScalarValue> = params.iter().map(|&p| ScalarValue::from(p)).collect();
        let output = session
            .execute(prepared, Some(params.into()))
            .await
            .unwrap();
        rows(output).await
    }

    /// A prepared feature vector (two online groups joined) runs a kept plan: its rows are read
    /// at each execution (a later write shows), a catalog change plans it again, and the ttl is
    /// applied when it runs. Statements reading offline files, or with a parameter outside an
    /// online key filter, are planned per execution and answer as ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prepared_statements_keep_plans_that_read_at_execution() {
        let dir = tempfile::tempdir().unwrap();
        let options = EngineOptions {
            online_cache_bytes: 8 << 20,
            query_memory_bytes: 1 << 30,
            ..EngineOptions::default()
        };
        let runtimes = crate::Runtimes {
            executor: tokio::runtime::Handle::current(),
            background: tokio::runtime::Handle::current(),
        };
        let engine = Engine::open(dir.path(), &options, runtimes).await.unwrap();
        let mut session = engine.session("quiver", "quiver").unwrap();
        for sql in [
            "CREATE FEATURE GROUP a (id BIGINT, x DOUBLE PRECISION, ts TIMESTAMP NOT NULL, PRIMARY KEY (id), EVENT TIME ts) WITH (online = true)",
            "CREATE FEATURE GROUP b (id BIGINT, y BIGINT, ts TIMESTAMP NOT NULL, PRIMARY KEY (id), EVENT TIME ts) WITH (online = true)",
            "INSERT INTO a VALUES (1, 1.5, now()), (2, 2.5, now()), (3, 3.5, now())",
            "INSERT INTO b VALUES (1, 10, now()), (3, 30, now())",
            "ALTER FEATURE GROUP a SET (ttl = '4 seconds')",
            "CREATE FEATURE VIEW v AS SELECT a.id, a.x, b.y FROM a LEFT JOIN b ON a.id = b.id",
        ] {
            run(&mut session, sql).await;
        }
        let vector = session
            .prepare(statement("SELECT * FROM feature_vector('v', $1)"))
            .await
            .unwrap();
        for (key, expected) in [
            (1, vec!["1, 1.5, 10"]),
            (2, vec!["2, 2.5, NULL"]),
            (9, vec![]),
            (3, vec!["3, 3.5, 30"]),
        ] {
            assert_eq!(execute(&mut session, &vector, &[key]).await, expected);
        }
        assert!(vector.runs_a_kept_plan());

        run(&mut session, "INSERT INTO a VALUES (1, 9.5, now())").await;
        assert_eq!(execute(&mut session, &vector, &[1]).await, ["1, 9.5, 10"]);

        // A catalog change plans it again.
        run(&mut session, "CREATE TABLE other (z BIGINT)").await;
        assert_eq!(execute(&mut session, &vector, &[1]).await, ["1, 9.5, 10"]);
        assert!(vector.runs_a_kept_plan());
        // The ttl is applied as each execution runs, not as of when the plan was made.
        tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
        assert!(execute(&mut session, &vector, &[1]).await.is_empty());

        // Offline rows are listed when a plan is made: planned per execution, new rows show.
        let offline = session
            .prepare(statement("SELECT count(*) FROM b WHERE id = $1"))
            .await
            .unwrap();
        assert_eq!(execute(&mut session, &offline, &[1]).await, ["1"]);
        run(&mut session, "INSERT INTO b VALUES (1, 11, now())").await;
        assert_eq!(execute(&mut session, &offline, &[1]).await, ["2"]);
        assert!(!offline.runs_a_kept_plan());

        // A parameter the lookup does not take is one physical planning refuses unbound.
        let filtered = session
            .prepare(statement("SELECT y FROM online.b WHERE id = $1 AND y > $2"))
            .await
            .unwrap();
        assert_eq!(execute(&mut session, &filtered, &[1, 10]).await, ["11"]);
        assert!(execute(&mut session, &filtered, &[1, 11]).await.is_empty());
        assert!(!filtered.runs_a_kept_plan());
    }

    /// Whether a node named `name` is in the plan.
    fn has_node(plan: &Arc<dyn ExecutionPlan>, name: &str) -> bool {
        let mut found = false;
        let _ = plan.apply(|node| {
            found |= node.name() == name;
            Ok(TreeNodeRecursion::Continue)
        });
        found
    }

    /// A kept plan's projections give the rows and schema DataFusion's give, execution after
    /// execution of the bound copies.
    #[tokio::test]
    async fn kept_projections_project_as_datafusion_projections_do() {
        let context = datafusion::prelude::SessionContext::new();
        let frame = context
            .sql("SELECT a + 1 AS b, upper(c) AS d, a FROM (VALUES (1, 'x'), (2, NULL)) AS t(a, c)")
            .await
            .unwrap();
        let plan = frame.create_physical_plan().await.unwrap();
        assert!(has_node(&plan, "ProjectionExec"));
        let expected = collect(Arc::clone(&plan), context.task_ctx())
            .await
            .unwrap();

        let kept = with_kept_projections(Arc::clone(&plan));
        assert!(!has_node(&kept, "ProjectionExec"));
        assert!(has_node(&kept, "KeptProjectionExec"));
        assert_eq!(kept.schema(), plan.schema());
        for _ in 0..2 {
            let bound = bind(&kept, None).unwrap().unwrap();
            let batches = collect(bound, context.task_ctx()).await.unwrap();
            assert_eq!(batches, expected);
        }
    }
}

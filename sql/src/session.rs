//! One connection's session: its project, user, settings and DataFusion context.
//!
//! Every connection has its own `SessionContext` (built on the engine's shared runtime), so `SET`
//! in one connection never leaks into another. A statement is first *prepared* (parsed statement
//! plus, for queries, a logical plan with its parameter and result types), then *executed* with
//! parameter values: the simple protocol does both at once, the extended protocol splits them.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::catalog::CatalogProviderList;
use datafusion::catalog::MemoryCatalogProviderList;
use datafusion::common::{DataFusionError, ParamValues};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, WriteOp};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast;
use futures::{FutureExt, StreamExt, TryStreamExt};

use crate::access;
use crate::asof;
use crate::audit;
use crate::column_names;
use crate::copy;
use crate::copy_in::CopyIn;
use crate::cursor;
use crate::ddl;
use crate::error::{SqlError, SqlResult};
use crate::feature_view;
use crate::kept_plan::{self, Next, PlanCache};
use crate::lookup::{FoundRows, KeyLookup};
use crate::models;
use crate::parser::Statement;
use crate::project_catalog::{PUBLIC_SCHEMA, ProjectCatalog};
use crate::serving;
use crate::settings::{Settings, SettingsView};
use crate::training_dataset;
use crate::transaction::{self, BlockWrites};
use crate::{Engine, PlannedQuery};

/// What executing a statement produced.
pub enum Output {
    /// Rows to stream to the client; the protocol layer ends them with `SELECT n`.
    Rows { stream: SendableRecordBatchStream },
    /// Rows a key lookup found in the online store, as stored, for the protocol layer to encode
    /// without Arrow arrays in between where it can; ended with `SELECT n`.
    Found(FoundRows),
    /// Rows a FETCH takes from a cursor, ended with `FETCH n`.
    Fetched { stream: SendableRecordBatchStream },
    /// A command's completion tag, e.g. `CREATE FEATURE GROUP` or `INSERT 0 3`.
    Command(CommandTag),
    /// The server must now receive COPY data and hand it to [`CopyIn`].
    CopyIn(Box<CopyIn>),
    /// Rows already encoded in the COPY format, one message per row.
    CopyOut {
        columns: usize,
        format: copy::CopyFormat,
        lines: futures::stream::BoxStream<'static, SqlResult<Vec<u8>>>,
    },
}

/// A command completion tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTag {
    pub command: String,
    /// For INSERT, the OID slot PostgreSQL still sends (always 0).
    pub oid: Option<u32>,
    pub rows: Option<u64>,
}

impl CommandTag {
    /// A tag without a row count.
    pub fn new(command: impl Into<String>) -> Self {
        CommandTag {
            command: command.into(),
            oid: None,
            rows: None,
        }
    }
}

/// A statement ready to execute, possibly several times with different parameters.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub statement: Statement,
    /// The logical plan of a query or INSERT, with `$n` placeholders unresolved.
    plan: Option<LogicalPlan>,
    /// The columns the statement returns, when it returns rows.
    result_schema: Option<SchemaRef>,
    /// Set when the statement is a key lookup on the online store, which then skips DataFusion.
    lookup: Option<Arc<KeyLookup>>,
    /// `plan` optimised, when optimising it before its parameters are known gives the plan every
    /// execution would make (it calls no function that is fixed per statement, like `now()`):
    /// executions then substitute their parameters and go straight to physical planning.
    optimized: Option<LogicalPlan>,
    /// Where `optimized`'s physical plan is kept between executions, when it reads only what is
    /// read as it runs (see `kept_plan`).
    kept: Option<Arc<PlanCache>>,
    /// Set when reading the rows has effects (train_model): the statement then runs to its end
    /// in `execute`, so its NOTICEs and errors reach the client before its rows.
    eager: bool,
    /// Set for serving calls (feature_vector, serve): a request for a few keys runs in one
    /// partition, as repartitioning them costs more than it could save (measured: p99 of a
    /// prepared serve 6 ms with two partitions, 1.1 ms with one).
    single_partition: bool,
    /// The settings the statement's `set_config` calls change when it executes.
    setting_changes: Vec<(String, String)>,
    /// Parameters whose PostgreSQL type the statement names and Arrow cannot (`$1::oid[]`).
    declared_parameter_types: Vec<(usize, postgres_types::Type)>,
}

impl Prepared {
    /// Whether executing it changes no data and no catalog entry: abandoning it part-way (a
    /// statement timeout) leaves nothing half-done.
    pub fn is_read_only(&self) -> bool {
        is_read_only(&self.statement)
    }

    /// The parameter types, `$1` first; `None` where the type could not be inferred.
    pub fn parameter_types(&self) -> SqlResult<Vec<Option<DataType>>> {
        let Some(plan) = &self.plan else {
            return Ok(Vec::new());
        };
        let mut types: HashMap<String, Option<DataType>> = plan.get_parameter_types()?;
        infer_any_parameters(plan, &mut types)?;
        let mut indexed = Vec::with_capacity(types.len());
        for (name, data_type) in types {
            let index = name
                .trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .filter(|i| *i >= 1)
                .ok_or_else(|| {
                    SqlError::Syntax(format!("parameter {name} is not of the form $n"))
                })?;
            indexed.push((index, data_type));
        }
        // A statement may skip a number (a rewrite can drop the expression holding $2); the
        // client still sends a value for it, of a type the plan leaves open.
        let count = indexed.iter().map(|(index, _)| *index).max().unwrap_or(0);
        let mut ordered = vec![None; count];
        for (index, data_type) in indexed {
            ordered[index - 1] = data_type;
        }
        Ok(ordered)
    }

    /// Whether its executions run a kept physical plan (`kept_plan`).
    #[cfg(test)]
    pub(crate) fn runs_a_kept_plan(&self) -> bool {
        self.kept.as_ref().is_some_and(|cache| cache.is_kept())
    }

    /// The PostgreSQL type to describe parameter `$index` (1-based) as, where the statement
    /// names one its Arrow type does not say (`$1::oid[]` is an `int4` list to the planner).
    pub fn declared_parameter_type(&self, index: usize) -> Option<&postgres_types::Type> {
        self.declared_parameter_types
            .iter()
            .find(|(declared, _)| *declared == index)
            .map(|(_, pg_type)| pg_type)
    }

    /// The result columns, or `None` for a statement that returns no rows.
    pub fn result_schema(&self) -> Option<SchemaRef> {
        self.result_schema.clone()
    }

    /// The statement as parsed.
    pub fn statement(&self) -> &Statement {
        &self.statement
    }
}

/// One connection's state.
pub struct Session {
    engine: Arc<Engine>,
    project: String,
    user: String,
    context: SessionContext,
    /// `context` with one partition, for serving calls; rebuilt after a SET or RESET.
    serving_context: Option<SessionContext>,
    /// Counts SET and RESET statements: a prepared statement's kept plan made under other
    /// settings is planned again.
    settings_generation: u64,
    settings: Settings,
    notices: Notices,
    /// The open transaction block, between BEGIN and COMMIT or ROLLBACK.
    block: Option<cursor::Block>,
    /// The writes of the open block, deferred to its COMMIT; installed in `context`.
    block_writes: Arc<BlockWrites>,
    /// Open cursors by name.
    cursors: HashMap<String, cursor::Cursor>,
}

/// Where NOTICE messages of a session's running statements go, once the protocol layer listens;
/// shared with the functions of the session's context that report progress (train_model).
#[derive(Debug, Clone, Default)]
pub(crate) struct Notices(
    Arc<std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>>,
);

impl Notices {
    /// Sends a NOTICE to the client, if anyone listens.
    pub(crate) fn send(&self, message: String) {
        if let Ok(listener) = self.0.lock()
            && let Some(listener) = listener.as_ref()
        {
            let _ = listener.send(message);
        }
    }

    fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<String> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        if let Ok(mut listener) = self.0.lock() {
            *listener = Some(sender);
        }
        receiver
    }
}

impl Session {
    /// Opens a session on a project, failing if the project does not exist.
    pub fn new(engine: Arc<Engine>, project: &str, user: &str) -> SqlResult<Session> {
        let catalog = engine.catalog.snapshot();
        if catalog.project(project).is_none() {
            return Err(SqlError::UndefinedProject(format!(
                "database \"{project}\" does not exist"
            )));
        }
        access::check_membership(&catalog, project, user)?;
        let mut settings = Settings::default();
        settings.set_superuser(catalog.user(user).is_some_and(|u| u.superuser));
        let context = build_context(&engine, project, user, Default::default())?;
        crate::system_catalog::SystemCatalog::install_user(&context, user);
        let block_writes = Arc::new(BlockWrites::default());
        context
            .state_ref()
            .write()
            .config_mut()
            .set_extension(block_writes.clone());
        let notices = Notices::default();
        for (name, tune) in [("train_model", false), ("tune_model", true)] {
            context.register_udtf(
                name,
                Arc::new(models::TrainModelFunction {
                    engine: engine.clone(),
                    project: project.to_string(),
                    user: user.to_string(),
                    notices: notices.clone(),
                    tune,
                }),
            );
        }
        Ok(Session {
            engine,
            project: project.to_string(),
            user: user.to_string(),
            context,
            serving_context: None,
            settings_generation: 0,
            settings,
            notices,
            block: None,
            block_writes,
            cursors: HashMap::new(),
        })
    }

    /// Whether a transaction block is open, and if so whether a statement in it failed: the
    /// transaction status the protocol reports after each statement.
    pub fn transaction_block(&self) -> Option<bool> {
        self.block.as_ref().map(|block| block.failed)
    }

    /// The project (database) this session is connected to.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The NOTICE messages statements send while they run (progress of long writes), for the
    /// protocol layer to forward to the client as they come.
    pub fn subscribe_notices(&mut self) -> tokio::sync::mpsc::UnboundedReceiver<String> {
        self.notices.subscribe()
    }

    /// Sends a NOTICE to the client, if anyone listens.
    pub(crate) fn notice(&self, message: String) {
        self.notices.send(message);
    }

    /// The user this session runs as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The session's settings (for SHOW and ParameterStatus).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Sets a parameter the client sent at startup (`application_name`).
    pub fn set_startup_parameter(&mut self, name: &str, value: &str) -> SqlResult<()> {
        self.settings.set(name, value)?;
        self.publish_settings();
        Ok(())
    }

    /// Shows the session's settings in its `pg_catalog.pg_settings`.
    fn publish_settings(&self) {
        if let Some(view) = self
            .context
            .state()
            .config()
            .get_extension::<SettingsView>()
        {
            view.publish(&self.settings);
        }
    }

    /// Plans a statement without executing it.
    pub async fn prepare(&self, statement: Statement) -> SqlResult<Prepared> {
        if self.block.as_ref().is_some_and(|block| block.failed) && !ends_block(&statement) {
            return Err(SqlError::InFailedTransaction);
        }
        self.engine.catch_up_with_cluster().await?;
        let mut setting_changes = Vec::new();
        let (plan, result_schema) = match &statement {
            Statement::Sql(sql) => match sql.as_ref() {
                ast::Statement::Query(_)
                | ast::Statement::Insert(_)
                | ast::Statement::Delete(_)
                | ast::Statement::Explain { .. } => {
                    let mut sql = sql.as_ref().clone();
                    setting_changes = Settings::take_set_configs(&mut sql);
                    // INSERT ... SELECT takes its columns by position: the names only need to
                    // be distinct for the engine.
                    match &mut sql {
                        ast::Statement::Query(query) => column_names::name_like_postgres(query),
                        ast::Statement::Insert(insert) => {
                            if let Some(source) = &mut insert.source {
                                column_names::name_like_postgres(source);
                            }
                        }
                        _ => {}
                    }
                    let plan = self.plan_sql_statement(sql).await?;
                    let schema = match &plan {
                        LogicalPlan::Dml(_) => None,
                        other => Some(Arc::new(other.schema().as_arrow().clone())),
                    };
                    (Some(plan), schema)
                }
                ast::Statement::ShowVariable { variable } => {
                    let name = Settings::display_name(variable);
                    (None, Some(single_text_column(&name)))
                }
                ast::Statement::Fetch { name, .. } => {
                    (None, Some(self.cursor(&name.value)?.schema()))
                }
                _ => (None, None),
            },
            Statement::ShowFeatureGroups
            | Statement::ShowProjects
            | Statement::DescribeFeatureGroup { .. }
            | Statement::ShowFeatureViews
            | Statement::DescribeFeatureView { .. }
            | Statement::ShowTrainingDatasets
            | Statement::DescribeTrainingDataset { .. } => {
                let plan = self
                    .plan_sql_text(&ddl::listing_query(
                        &statement,
                        &self.engine,
                        &self.project,
                    )?)
                    .await?;
                let schema = Arc::new(plan.schema().as_arrow().clone());
                (Some(plan), Some(schema))
            }
            _ => (None, None),
        };
        let lookup = plan.as_ref().and_then(KeyLookup::recognise).map(Arc::new);
        let calls = |functions: &[&str]| matches!(&statement, Statement::Sql(sql) if serving::calls_table_function(sql, functions));
        let eager = calls(&["train_model", "tune_model"]);
        let single_partition = calls(&["feature_vector", "feature_vectors", "serve"]);
        let optimized = match &plan {
            Some(plan) if lookup.is_none() && !eager && optimizes_once(plan) => {
                // A plan the optimiser cannot take before its parameters are known is
                // optimised at each execution instead, as it would be without this.
                self.context.state().optimize(plan).ok()
            }
            _ => None,
        };
        let kept = optimized
            .as_ref()
            .filter(|_| setting_changes.is_empty())
            .and_then(PlanCache::for_plan);
        let declared_parameter_types = match &statement {
            Statement::Sql(sql) if plan.is_some() => {
                crate::system_catalog::declared_parameter_types(sql)
            }
            _ => Vec::new(),
        };
        Ok(Prepared {
            statement,
            plan,
            result_schema,
            lookup,
            optimized,
            kept,
            eager,
            single_partition,
            setting_changes,
            declared_parameter_types,
        })
    }

    /// Executes a prepared statement with these parameter values. Inside a transaction block a
    /// failure aborts the block, and an aborted block refuses everything but its end (25P02).
    pub async fn execute(
        &mut self,
        prepared: &Prepared,
        params: Option<ParamValues>,
    ) -> SqlResult<Output> {
        if self.block.as_ref().is_some_and(|block| block.failed) && !ends_block(&prepared.statement)
        {
            return Err(SqlError::InFailedTransaction);
        }
        // On a cluster member, every statement sees what any node committed before it.
        self.engine.catch_up_with_cluster().await?;
        let result = match access::authorize(
            &self.engine.catalog.snapshot(),
            &self.project,
            &self.user,
            &prepared.statement,
        ) {
            // A key lookup stays out of the general path's future, which holds every kind of
            // statement's state and is copied at each move (the copies were 7% of a lookup's
            // time in bench/online_lookup's profile); that one is boxed, once.
            Ok(()) => match &prepared.lookup {
                Some(lookup) => lookup
                    .execute(&self.engine, params.as_ref())
                    .await
                    .map(Output::Found),
                None => Box::pin(self.execute_unblocked(prepared, params)).await,
            },
            Err(denied) => Err(denied),
        };
        if let Some((kind, object)) = audit::subject(&prepared.statement) {
            self.engine.audit.record(&audit::AuditEvent {
                time: chrono::Utc::now(),
                user: self.user.clone(),
                project: self.project.clone(),
                kind,
                object,
                success: result.is_ok(),
                error: result.as_ref().err().map(|e| e.to_string()),
            });
        }
        if let Some(block) = &mut self.block {
            match &result {
                Err(_) => block.failed = true,
                Ok(_)
                    if changes_state(&prepared.statement) && !is_deferred(&prepared.statement) =>
                {
                    block.writes += 1
                }
                Ok(_) => {}
            }
        }
        result
    }

    async fn execute_unblocked(
        &mut self,
        prepared: &Prepared,
        params: Option<ParamValues>,
    ) -> SqlResult<Output> {
        for (name, value) in &prepared.setting_changes {
            self.settings.set(name, value)?;
        }
        if !prepared.setting_changes.is_empty() {
            self.publish_settings();
        }
        if let Some(plan) = &prepared.plan {
            let context = match prepared.single_partition {
                true => self.serving_context(),
                false => self.context.clone(),
            };
            let kept = match &prepared.kept {
                Some(cache) => {
                    self.run_kept(cache, prepared, &context, params.as_ref())
                        .await?
                }
                None => None,
            };
            let output = match (&prepared.optimized, kept) {
                (_, Some(stream)) => Output::Rows { stream },
                (Some(optimized), None) => {
                    let plan = match params {
                        Some(params) => substitute_parameters(optimized.clone(), &params)?,
                        None => optimized.clone(),
                    };
                    let query = PlannedQuery {
                        frame: datafusion::dataframe::DataFrame::new(context.state(), plan),
                        optimized: true,
                    };
                    Output::Rows {
                        stream: self.execute_on_executor(query),
                    }
                }
                (None, None) => {
                    let plan = match params {
                        Some(params) => plan.clone().with_param_values(params)?,
                        None => plan.clone(),
                    };
                    self.execute_plan_in(&context, plan).await?
                }
            };
            return match output {
                Output::Rows { stream } if prepared.eager => {
                    let schema = stream.schema();
                    let batches: Vec<RecordBatch> = stream.try_collect().await?;
                    let batches = futures::stream::iter(batches.into_iter().map(Ok));
                    Ok(Output::Rows {
                        stream: Box::pin(RecordBatchStreamAdapter::new(schema, batches)),
                    })
                }
                other => Ok(other),
            };
        }
        match &prepared.statement {
            Statement::Sql(sql) => self.execute_other_sql(sql).await,
            Statement::CreateFeatureView(create) => feature_view::create(self, create)
                .await
                .map(Output::Command),
            Statement::DropFeatureView {
                name,
                version,
                if_exists,
            } => feature_view::drop(self, name, *version, *if_exists)
                .await
                .map(Output::Command),
            Statement::CreateTrainingDataset(create) => training_dataset::create(self, create)
                .await
                .map(Output::Command),
            Statement::RecreateTrainingDataset { name, version } => {
                training_dataset::recreate(self, name, *version)
                    .await
                    .map(Output::Command)
            }
            Statement::DropTrainingDataset {
                name,
                version,
                if_exists,
            } => training_dataset::drop(self, name, *version, *if_exists)
                .await
                .map(Output::Command),
            Statement::DropModel {
                name,
                version,
                if_exists,
            } => models::drop(self, name, *version, *if_exists)
                .await
                .map(Output::Command),
            Statement::CreateUser(_)
            | Statement::AlterUser { .. }
            | Statement::DropUser { .. }
            | Statement::Grant { .. }
            | Statement::Revoke { .. }
            | Statement::ShareFeatureGroup { .. }
            | Statement::UnshareFeatureGroup { .. } => access::execute(self, &prepared.statement)
                .await
                .map(Output::Command),
            Statement::AlterCluster(change) => ddl::alter_cluster(&self.engine, change)
                .await
                .map(Output::Command),
            statement => ddl::execute(&self.engine, &self.project, &self.user, statement)
                .await
                .map(Output::Command),
        }
    }

    /// Prepares and executes in one step, as the simple query protocol does.
    pub async fn run(&mut self, statement: Statement) -> SqlResult<Output> {
        let mut prepared = match self.prepare(statement).await {
            Ok(prepared) => prepared,
            Err(error) => {
                self.note_failure();
                return Err(error);
            }
        };
        // Run once: nothing to keep a plan for.
        prepared.kept = None;
        self.execute(&prepared, None).await
    }

    /// Records that a statement failed outside `execute` (the extended protocol's Parse, a client's
    /// CopyFail): inside a transaction block that aborts the block, as any failure does.
    pub fn note_failure(&mut self) {
        if let Some(block) = &mut self.block {
            block.failed = true;
        }
    }

    /// Whether a cursor of this name is open.
    pub fn has_cursor(&self, name: &str) -> bool {
        self.cursors.contains_key(name)
    }

    /// The open cursor of this name.
    fn cursor(&self, name: &str) -> SqlResult<&cursor::Cursor> {
        self.cursors
            .get(name)
            .ok_or_else(|| SqlError::UndefinedCursor(format!("cursor \"{name}\" does not exist")))
    }

    /// The open transaction block, for a statement that needs one (25P01 outside a block).
    fn open_block(&mut self, statement: &str) -> SqlResult<&mut cursor::Block> {
        self.block.as_mut().ok_or_else(|| {
            SqlError::NoActiveTransaction(format!(
                "{statement} can only be used in transaction blocks"
            ))
        })
    }

    /// Ends the transaction block: its cursors close, except those declared WITH HOLD. Returns
    /// the block and its deferred writes, for COMMIT to apply.
    fn end_block(&mut self) -> Option<(cursor::Block, Vec<transaction::Deferred>)> {
        self.cursors.retain(|_, cursor| cursor.hold);
        let writes = self.block_writes.end();
        self.block.take().map(|block| (block, writes))
    }

    /// Plans one statement: feature views are expanded, ASOF joins nested, then DataFusion plans.
    pub(crate) async fn plan_sql_statement(
        &self,
        statement: ast::Statement,
    ) -> SqlResult<LogicalPlan> {
        self.plan_in(&self.context, statement).await
    }

    async fn plan_in(
        &self,
        context: &SessionContext,
        mut statement: ast::Statement,
    ) -> SqlResult<LogicalPlan> {
        self.settings
            .substitute_current_settings(&mut statement, context)?;
        crate::system_catalog::user_keywords_to_calls(&mut statement);
        feature_view::inline_views(
            &mut statement,
            &self.engine.catalog.snapshot(),
            &self.project,
        )?;
        training_dataset::rewrite_dataset_calls(&mut statement)?;
        serving::rewrite_serving_calls(
            &mut statement,
            &self.engine.catalog.snapshot(),
            &self.project,
        )?;
        let mut scored_by = models::rewrite_serve_calls(
            &mut statement,
            &self.engine.catalog.snapshot(),
            &self.project,
        )?;
        scored_by.extend(models::rewrite_predict_calls(
            &mut statement,
            &self.engine.catalog.snapshot(),
            &self.project,
        )?);
        for model in &scored_by {
            self.engine.models.load(&self.engine, model).await?;
        }
        let plan = plan_in_context(context, statement).await?;
        if models::served_models(&plan).is_empty() {
            return Ok(plan);
        }
        let logs = models::ensure_logs(&self.engine, &self.project, &self.user, &plan).await?;
        models::with_logging(plan, &logs, &self.engine.prediction_log)
    }

    /// A query planned so that its reads of the relations in `pins` see those offline versions
    /// (the session's own settings apply as well).
    pub(crate) async fn pinned_frame(
        &self,
        query: ast::Statement,
        pins: HashMap<quiver_catalog::Oid, u64>,
    ) -> SqlResult<datafusion::dataframe::DataFrame> {
        let context = build_context(&self.engine, &self.project, &self.user, Arc::new(pins))?;
        let config = self.context.state().config().clone();
        let state = datafusion::execution::SessionStateBuilder::new_from_existing(context.state())
            .with_config(config)
            .build();
        let context = SessionContext::new_with_state(state);
        let plan = self.plan_in(&context, query).await?;
        Ok(context.execute_logical_plan(plan).await?)
    }

    /// Streams a frame's rows, computed on the engine's executor.
    pub(crate) fn stream_frame(
        &self,
        frame: datafusion::dataframe::DataFrame,
    ) -> SendableRecordBatchStream {
        self.execute_on_executor(frame)
    }

    async fn plan_sql_text(&self, sql: &str) -> SqlResult<LogicalPlan> {
        let statements =
            crate::parser::parse(sql).map_err(|e| SqlError::Internal(format!("{sql}: {e}")))?;
        match statements.into_iter().next() {
            Some(Statement::Sql(statement)) => self.plan_sql_statement(*statement).await,
            _ => Err(SqlError::Internal(format!("not a query: {sql}"))),
        }
    }

    /// The session's context with one partition (built once per settings change: building a
    /// state costs a fifth of a millisecond, as much as a served request's own work).
    fn serving_context(&mut self) -> SessionContext {
        if let Some(context) = &self.serving_context {
            return context.clone();
        }
        let mut config = self.context.state().config().clone();
        config.options_mut().execution.target_partitions = 1;
        // A dynamic filter prunes a join's probe side by its build side's keys: nothing to gain
        // on a request's few rows, and a plan producing one cannot be kept (`kept_plan`).
        let optimizer = &mut config.options_mut().optimizer;
        optimizer.enable_dynamic_filter_pushdown = false;
        optimizer.enable_join_dynamic_filter_pushdown = false;
        optimizer.enable_topk_dynamic_filter_pushdown = false;
        optimizer.enable_aggregate_dynamic_filter_pushdown = false;
        let state =
            datafusion::execution::SessionStateBuilder::new_from_existing(self.context.state())
                .with_config(config)
                .build();
        let context = SessionContext::new_with_state(state);
        self.serving_context = Some(context.clone());
        context
    }

    async fn execute_plan_in(
        &self,
        context: &SessionContext,
        plan: LogicalPlan,
    ) -> SqlResult<Output> {
        let write = match &plan {
            LogicalPlan::Dml(dml) => Some(dml.op.clone()),
            _ => None,
        };
        let frame = context.execute_logical_plan(plan).await?;
        if let Some(op) = write {
            let engine = self.engine.clone();
            let write = async move {
                let (plan, task) = engine.plan_physical(frame).await?;
                datafusion::physical_plan::collect(plan, task).await
            };
            let batches = self
                .engine
                .executor()
                .spawn(write)
                .await
                .map_err(|e| SqlError::Internal(format!("{op} task failed: {e}")))??;
            let rows = written_rows(&batches)?;
            // PostgreSQL's tags: `INSERT 0 n` (with the legacy OID slot), `DELETE n`.
            let (command, oid) = match op {
                WriteOp::Delete => ("DELETE", None),
                WriteOp::Update => ("UPDATE", None),
                _ => ("INSERT", Some(0)),
            };
            return Ok(Output::Command(CommandTag {
                command: command.into(),
                oid,
                rows: Some(rows),
            }));
        }
        Ok(Output::Rows {
            stream: self.execute_on_executor(frame),
        })
    }

    /// After SET or RESET: the settings reach the context's functions, and what was built or
    /// planned under the old ones is built again.
    fn settings_changed(&mut self) {
        self.publish_settings();
        self.serving_context = None;
        self.settings_generation += 1;
    }

    /// Runs a prepared query from its kept physical plan, planning it without its parameters
    /// and keeping it first if there is none for the current catalog and settings. `None` when
    /// it is planned per execution instead: it cannot be kept, or these parameter values need a
    /// plan of their own.
    async fn run_kept(
        &self,
        cache: &PlanCache,
        prepared: &Prepared,
        context: &SessionContext,
        params: Option<&ParamValues>,
    ) -> SqlResult<Option<SendableRecordBatchStream>> {
        let Some(optimized) = &prepared.optimized else {
            return Ok(None);
        };
        let catalog_commands = self.engine.catalog.snapshot().applied_commands();
        let kept = match cache.next(catalog_commands, self.settings_generation) {
            Next::PlanPerExecution => return Ok(None),
            Next::Kept(kept) => kept,
            Next::PlanAndKeep => {
                let query = PlannedQuery {
                    frame: datafusion::dataframe::DataFrame::new(
                        context.state(),
                        optimized.clone(),
                    ),
                    optimized: true,
                };
                // Planning refuses a parameter anywhere but an online key filter.
                let Ok((plan, task)) = self.engine.plan_physical(query).await else {
                    cache.never();
                    return Ok(None);
                };
                let schema = Arc::new(optimized.schema().as_arrow().clone());
                let kept = cache.keep(
                    plan,
                    task,
                    schema,
                    catalog_commands,
                    self.settings_generation,
                );
                match kept {
                    Some(kept) => kept,
                    None => return Ok(None),
                }
            }
        };
        let Some(plan) = kept_plan::bind(&kept.plan, params)? else {
            return Ok(None);
        };
        let task = kept.task.clone();
        if !prepared.single_partition {
            return Ok(Some(
                self.stream_on_executor(kept.schema.clone(), async move {
                    datafusion::physical_plan::execute_stream(plan, task)
                }),
            ));
        }
        // A serving call's plan is a few point gets and the expressions over their rows: it
        // runs where the connection is served, without the hop to the executor and back (two
        // thread wake-ups; a prepared serve at one connection went from 0.14 to 0.11 ms p50).
        // A panic still ends in an error.
        let stream = datafusion::physical_plan::execute_stream(plan, task)?;
        let batches = std::panic::AssertUnwindSafe(stream)
            .catch_unwind()
            .map(|polled| polled.unwrap_or_else(|panic| Err(panic_error(panic))));
        Ok(Some(Box::pin(RecordBatchStreamAdapter::new(
            kept.schema.clone(),
            batches,
        ))))
    }

    /// Runs a query on the engine's executor and returns its batches as they come.
    fn execute_on_executor(&self, query: impl Into<PlannedQuery>) -> SendableRecordBatchStream {
        let query = query.into();
        let schema: SchemaRef = Arc::new(query.frame.schema().as_arrow().clone());
        let engine = self.engine.clone();
        self.stream_on_executor(schema, async move {
            engine
                .plan_physical(query)
                .await
                .and_then(|(plan, task)| datafusion::physical_plan::execute_stream(plan, task))
        })
    }

    /// Starts a query's stream on the engine's executor and returns its batches as they come.
    /// Dropping the returned stream (client gone, statement canceled) stops the query.
    fn stream_on_executor(
        &self,
        schema: SchemaRef,
        start: impl Future<Output = datafusion::common::Result<SendableRecordBatchStream>>
        + Send
        + 'static,
    ) -> SendableRecordBatchStream {
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let panic_sender = sender.clone();
        let query = async move {
            let mut stream = match start.await {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = sender.send(Err(e)).await;
                    return;
                }
            };
            while let Some(batch) = stream.next().await {
                if sender.send(batch).await.is_err() {
                    return;
                }
            }
        };
        // A panic in an operator must reach the client as an error, not as the end of the rows.
        let task = self.engine.executor().spawn(async move {
            if let Err(panic) = std::panic::AssertUnwindSafe(query).catch_unwind().await {
                let _ = panic_sender.send(Err(panic_error(panic))).await;
            }
        });
        let abort_on_drop = AbortOnDrop(task);
        let batches = futures::stream::unfold(
            (receiver, abort_on_drop),
            |(mut receiver, guard)| async move {
                receiver
                    .recv()
                    .await
                    .map(|batch| (batch, (receiver, guard)))
            },
        );
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }

    async fn execute_other_sql(&mut self, statement: &ast::Statement) -> SqlResult<Output> {
        use ast::Statement as S;
        match statement {
            S::CreateTable(create) => {
                ddl::create_table(&self.engine, &self.project, &self.user, create)
                    .await
                    .map(Output::Command)
            }
            S::Drop {
                object_type,
                if_exists,
                names,
                cascade,
                ..
            } => ddl::drop_objects(
                &self.engine,
                &self.project,
                *object_type,
                *if_exists,
                names,
                *cascade,
            )
            .await
            .map(Output::Command),
            S::Set(set) => {
                let tag = self.settings.apply_set(set, &self.context)?;
                self.settings_changed();
                Ok(Output::Command(tag))
            }
            S::ShowVariable { variable } => {
                let name = Settings::display_name(variable);
                let value = self.settings.show(variable, &self.context)?;
                let batch = RecordBatch::try_new(
                    single_text_column(&name),
                    vec![Arc::new(StringArray::from(vec![value]))],
                )
                .map_err(|e| SqlError::Internal(e.to_string()))?;
                let schema = batch.schema();
                let stream = futures::stream::iter(vec![Ok(batch)]);
                Ok(Output::Rows {
                    stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
                })
            }
            S::Reset(reset) => {
                let tag = self.settings.apply_reset(reset, &self.context)?;
                self.settings_changed();
                Ok(Output::Command(tag))
            }
            S::StartTransaction { .. } => {
                if self.block.is_some() {
                    self.notices
                        .send("WARNING: there is already a transaction in progress".into());
                } else {
                    self.block = Some(cursor::Block::default());
                    self.block_writes.begin();
                }
                Ok(Output::Command(CommandTag::new("BEGIN")))
            }
            S::Commit { .. } => match self.end_block() {
                // COMMIT of an aborted block rolls it back, as in PostgreSQL.
                Some((block, _)) if block.failed => {
                    Ok(Output::Command(CommandTag::new("ROLLBACK")))
                }
                Some((_, writes)) => {
                    transaction::commit(&self.engine, writes).await?;
                    Ok(Output::Command(CommandTag::new("COMMIT")))
                }
                None => {
                    self.notices
                        .send("WARNING: there is no transaction in progress".into());
                    Ok(Output::Command(CommandTag::new("COMMIT")))
                }
            },
            S::Rollback {
                savepoint: Some(savepoint),
                ..
            } => {
                let (committed, mark) = self
                    .open_block("ROLLBACK TO SAVEPOINT")?
                    .roll_back_to(&savepoint.value)?;
                self.block_writes.roll_back_to(mark);
                if committed > 0 {
                    self.notices.send(format!(
                        "WARNING: {committed} statement(s) since savepoint \"{}\" changed the \
                         catalog, which commits at once; ROLLBACK TO SAVEPOINT does not undo them",
                        savepoint.value
                    ));
                }
                Ok(Output::Command(CommandTag::new("ROLLBACK")))
            }
            S::Savepoint { name } => {
                let mark = self.block_writes.mark();
                self.open_block("SAVEPOINT")?.savepoint(&name.value, mark);
                Ok(Output::Command(CommandTag::new("SAVEPOINT")))
            }
            S::ReleaseSavepoint { name } => {
                self.open_block("RELEASE SAVEPOINT")?.release(&name.value)?;
                Ok(Output::Command(CommandTag::new("RELEASE")))
            }
            S::Rollback { .. } => {
                match self.end_block() {
                    Some((block, _)) if block.writes > 0 => self.notices.send(format!(
                        "WARNING: {} statement(s) of this transaction block changed the catalog, \
                         which commits at once; ROLLBACK does not undo them",
                        block.writes
                    )),
                    Some(_) => {}
                    None => self
                        .notices
                        .send("WARNING: there is no transaction in progress".into()),
                }
                Ok(Output::Command(CommandTag::new("ROLLBACK")))
            }
            S::Declare { stmts } => {
                for declare in stmts {
                    self.declare_cursor(declare).await?;
                }
                Ok(Output::Command(CommandTag::new("DECLARE CURSOR")))
            }
            S::Fetch {
                name,
                direction,
                into,
                ..
            } => {
                if into.is_some() {
                    return Err(SqlError::NotSupported(
                        "FETCH ... INTO is not supported".into(),
                    ));
                }
                let count = cursor::fetch_count(direction)?;
                let cursor = self.cursors.get_mut(&name.value).ok_or_else(|| {
                    SqlError::UndefinedCursor(format!("cursor \"{}\" does not exist", name.value))
                })?;
                let schema = cursor.schema();
                let batches = cursor.fetch(count).await?;
                let stream = futures::stream::iter(batches.into_iter().map(Ok));
                Ok(Output::Fetched {
                    stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
                })
            }
            S::Close { cursor } => {
                match cursor {
                    ast::CloseCursor::All => self.cursors.clear(),
                    ast::CloseCursor::Specific { name } => {
                        if self.cursors.remove(&name.value).is_none() {
                            return Err(SqlError::UndefinedCursor(format!(
                                "cursor \"{}\" does not exist",
                                name.value
                            )));
                        }
                    }
                }
                Ok(Output::Command(CommandTag::new("CLOSE CURSOR")))
            }
            S::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => copy::start(self, source, *to, target, options, legacy_options).await,
            other => Err(SqlError::NotSupported(format!(
                "statement not supported: {}",
                statement_kind(other)
            ))),
        }
    }

    /// `DECLARE name [BINARY] [NO SCROLL] CURSOR [WITH HOLD] FOR query`: runs the query and keeps
    /// its stream for FETCH. Outside a transaction block only a WITH HOLD cursor may be declared.
    async fn declare_cursor(&mut self, declare: &ast::Declare) -> SqlResult<()> {
        let Some(query) = &declare.for_query else {
            return Err(SqlError::NotSupported(
                "DECLARE declares cursors only: DECLARE name CURSOR FOR query".into(),
            ));
        };
        if declare.scroll == Some(true) {
            return Err(SqlError::NotSupported(
                "SCROLL cursors are not supported: cursors scan forward".into(),
            ));
        }
        let hold = declare.hold == Some(true);
        if self.block.is_none() && !hold {
            return Err(SqlError::NoActiveTransaction(
                "DECLARE CURSOR can only be used in transaction blocks".into(),
            ));
        }
        for name in &declare.names {
            if self.cursors.contains_key(&name.value) {
                return Err(SqlError::DuplicateCursor(format!(
                    "cursor \"{}\" already exists",
                    name.value
                )));
            }
            let stream = self
                .query_stream(ast::Statement::Query(query.clone()))
                .await?;
            self.cursors
                .insert(name.value.clone(), cursor::Cursor::new(stream, hold));
        }
        Ok(())
    }

    /// Runs a query given as a parsed statement and returns its stream (used by COPY TO).
    pub(crate) async fn query_stream(
        &self,
        query: ast::Statement,
    ) -> SqlResult<SendableRecordBatchStream> {
        let plan = self.plan_sql_statement(query).await?;
        let frame = self.context.execute_logical_plan(plan).await?;
        let (plan, task) = self.engine.plan_physical(frame).await?;
        Ok(datafusion::physical_plan::execute_stream(plan, task)?)
    }

    /// The open transaction block's deferred writes, if a block is open.
    pub(crate) fn open_block_writes(&self) -> Option<Arc<BlockWrites>> {
        self.block_writes
            .is_open()
            .then(|| self.block_writes.clone())
    }

    /// Ends a COPY FROM STDIN this session started: inside a transaction block a failure aborts
    /// the block, as a failed statement does.
    pub async fn finish_copy(&mut self, copy: CopyIn) -> SqlResult<CommandTag> {
        let finished = copy.finish().await;
        if finished.is_err() {
            self.note_failure();
        }
        finished
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

/// Aborts the query task when the stream reading its batches is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A DataFusion context for a session on `project`; reads of the relations in `pins` see those
/// offline versions.
pub(crate) fn build_context(
    engine: &Arc<Engine>,
    project: &str,
    viewer: &str,
    pins: Arc<HashMap<quiver_catalog::Oid, u64>>,
) -> SqlResult<SessionContext> {
    // pg_settings shows the defaults until a session publishes its own settings here.
    let settings_view = SettingsView::new(&Settings::default());
    let mut config = SessionConfig::new()
        .with_extension(Arc::new(settings_view.clone()))
        .with_default_catalog_and_schema(project, PUBLIC_SCHEMA)
        .with_create_default_catalog_and_schema(false)
        // Served by the project's catalog instead (see system_catalog::information_schema).
        .with_information_schema(false)
        .with_target_partitions(engine.target_partitions());
    // Sorts (those under ASOF JOIN above all) concatenate up to this much of their input and sort
    // it at once rather than sorting each batch and merging many small runs: measured on
    // bench/pit, 64 MiB is 15% faster than DataFusion's 1 MiB for a fifth more peak memory.
    config.options_mut().execution.sort_in_place_threshold_bytes = 64 << 20;
    let catalogs = MemoryCatalogProviderList::new();
    catalogs.register_catalog(
        project.to_string(),
        Arc::new(ProjectCatalog::new(
            engine.clone(),
            project.to_string(),
            viewer.to_string(),
            pins,
        )),
    );
    let mut state = engine
        .system_catalog
        .state_builder()
        .with_config(config)
        .with_runtime_env(engine.runtime())
        .with_catalog_list(Arc::new(catalogs))
        .with_relation_planners(vec![Arc::new(asof::AsofRelationPlanner)])
        .with_query_planner(Arc::new(asof::QuiverQueryPlanner))
        .build();
    // json_get & co. and the -> / ->> operators, as PostgreSQL users read JSON text with.
    datafusion_functions_json::register_all(&mut state)?;
    let context = SessionContext::new_with_state(state);
    engine
        .system_catalog
        .install(engine, &context, project, viewer, settings_view)?;
    context.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        models::PredictFunction::new(engine.clone()),
    ));
    context.register_udf(serving::clock());
    Ok(context)
}

/// Plans a statement whose feature views and Quiver functions are already expanded (a stored
/// query): ASOF joins are nested, then DataFusion plans it in `context`.
pub(crate) async fn plan_in_context(
    context: &SessionContext,
    mut statement: ast::Statement,
) -> SqlResult<LogicalPlan> {
    asof::nest_asof_joins(&mut statement);
    let statement = datafusion::sql::parser::Statement::Statement(Box::new(statement));
    let plan = context.state().statement_to_plan(statement).await?;
    reject_session_local_ddl(&plan)?;
    Ok(plan)
}

/// DataFusion would keep `CREATE VIEW` and friends in the session's memory and lose them at
/// disconnect; Quiver's objects live in the catalog, so those are refused.
fn reject_session_local_ddl(plan: &LogicalPlan) -> SqlResult<()> {
    match plan {
        LogicalPlan::Ddl(ddl) => Err(SqlError::NotSupported(format!(
            "{} is not supported",
            match ddl {
                DdlStatement::CreateView(_) => "CREATE VIEW",
                DdlStatement::CreateMemoryTable(_) => "CREATE TABLE AS",
                _ => "this DDL statement",
            }
        ))),
        _ => Ok(()),
    }
}

/// DataFusion leaves the type of `$n` in `col = ANY($n)` (planned as `array_has($n, col)`) and
/// in `$n::type` unknown; PostgreSQL infers an array of the column's type and the cast's type,
/// and drivers that ask the server for parameter types (tokio-postgres, JDBC, asyncpg) need them.
fn infer_any_parameters(
    plan: &LogicalPlan,
    types: &mut HashMap<String, Option<DataType>>,
) -> SqlResult<()> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Expr, ExprSchemable};
    plan.apply(|node| {
        let Some(input) = node.inputs().first().map(|i| i.schema().clone()) else {
            return Ok(TreeNodeRecursion::Continue);
        };
        for expr in node.expressions() {
            expr.apply(|e| {
                if let Expr::ScalarFunction(call) = e
                    && call.name() == "array_has"
                    && call.args.len() == 2
                    && let Expr::Placeholder(p) = &call.args[0]
                    && matches!(types.get(&p.id), Some(None))
                    && let Ok(element) = call.args[1].get_type(&input)
                {
                    let list = DataType::List(Arc::new(Field::new_list_field(element, true)));
                    types.insert(p.id.clone(), Some(list));
                }
                // `$1::bigint`: PostgreSQL types the parameter as the cast's target, and drivers
                // that encode by the described type (asyncpg) rely on it.
                if let Expr::Cast(cast) = e
                    && let Expr::Placeholder(p) = cast.expr.as_ref()
                    && matches!(types.get(&p.id), Some(None))
                {
                    types.insert(p.id.clone(), Some(cast.field.data_type().clone()));
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// Whether a statement ends a transaction block (or rolls back to a savepoint), which an aborted
/// block still accepts.
fn ends_block(statement: &Statement) -> bool {
    matches!(statement, Statement::Sql(sql)
        if matches!(sql.as_ref(), ast::Statement::Commit { .. } | ast::Statement::Rollback { .. }))
}

/// Whether executing a statement changes no data and no catalog entry: abandoning it part-way
/// (a statement timeout) leaves nothing half-done.
pub fn is_read_only(statement: &Statement) -> bool {
    !changes_state(statement)
}

/// Whether a statement's writes wait for the transaction block's COMMIT (INSERT, DELETE, COPY
/// FROM); other changes (DDL, grants) commit at once even inside a block.
fn is_deferred(statement: &Statement) -> bool {
    matches!(statement, Statement::Sql(sql) if matches!(
        sql.as_ref(),
        ast::Statement::Insert(_) | ast::Statement::Delete(_) | ast::Statement::Copy { to: false, .. }
    ))
}

/// Whether a statement changes data or the catalog (COMMIT applies a block's writes).
fn changes_state(statement: &Statement) -> bool {
    use ast::Statement as S;
    match statement {
        Statement::Sql(sql) => !matches!(
            sql.as_ref(),
            S::Query(_)
                | S::Explain { .. }
                | S::ShowVariable { .. }
                | S::Set(_)
                | S::Reset(_)
                | S::StartTransaction { .. }
                | S::Rollback { .. }
                | S::Declare { .. }
                | S::Fetch { .. }
                | S::Close { .. }
                | S::Savepoint { .. }
                | S::ReleaseSavepoint { .. }
                | S::Copy { to: true, .. }
        ),
        Statement::ShowFeatureGroups
        | Statement::ShowProjects
        | Statement::DescribeFeatureGroup { .. }
        | Statement::ShowFeatureViews
        | Statement::DescribeFeatureView { .. }
        | Statement::ShowTrainingDatasets
        | Statement::DescribeTrainingDataset { .. } => false,
        _ => true,
    }
}

fn written_rows(batches: &[RecordBatch]) -> SqlResult<u64> {
    let mut rows = 0;
    for batch in batches {
        if batch.num_columns() == 0 {
            continue;
        }
        let counts = batch
            .column(0)
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| SqlError::Internal("a write returned no row count".into()))?;
        rows += counts.iter().flatten().sum::<u64>();
    }
    Ok(rows)
}

fn single_text_column(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]))
}

/// The leading keywords of a statement, for "not supported" messages.
fn statement_kind(statement: &ast::Statement) -> String {
    let text = statement.to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The error a query's panic ends it with.
fn panic_error(panic: Box<dyn std::any::Any + Send>) -> DataFusionError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into());
    DataFusionError::Internal(format!("query failed: {message}"))
}

/// Whether a query's optimised plan can serve all its executions: it is a query (writes and
/// EXPLAIN are planned at each execution), and it calls no stable function, which the optimiser
/// evaluates once (`now()` is the time of the statement, `current_setting` the setting then).
fn optimizes_once(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::{Expr, Volatility};
    if matches!(
        plan,
        LogicalPlan::Dml(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::DescribeTable(_)
    ) {
        return false;
    }
    let mut stable = false;
    let walked = plan.apply_with_subqueries(|node| {
        stable = expressions_contain(node, |e| {
            matches!(e, Expr::ScalarFunction(call)
                if call.func.signature().volatility == Volatility::Stable)
        })?;
        Ok(match stable {
            true => TreeNodeRecursion::Stop,
            false => TreeNodeRecursion::Continue,
        })
    });
    walked.is_ok() && !stable
}

/// Whether an expression of `node` (not of its inputs) has a part that is `wanted`.
fn expressions_contain(
    node: &LogicalPlan,
    wanted: impl Fn(&datafusion::logical_expr::Expr) -> bool,
) -> datafusion::common::Result<bool> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut found = false;
    node.apply_expressions(|expr| {
        found = expr.exists(|e| Ok(wanted(e)))?;
        Ok(match found {
            true => TreeNodeRecursion::Stop,
            false => TreeNodeRecursion::Continue,
        })
    })?;
    Ok(found)
}

/// An optimised plan with its parameters replaced by these values. As
/// `LogicalPlan::with_param_values`, but the schemas are kept: that one recomputes every node's
/// schema, a sixth of a prepared `serve` call's time on a view of 50 features. The optimised
/// plan's parameters already have their types, and a value's name is kept by an alias, so a value
/// changes no schema but for nullability, where the kept schema (nullable) is the looser one.
fn substitute_parameters(plan: LogicalPlan, params: &ParamValues) -> SqlResult<LogicalPlan> {
    use datafusion::common::tree_node::Transformed;
    use datafusion::logical_expr::Expr;
    use datafusion::logical_expr::expr_rewriter::NamePreserver;
    let substituted = plan.transform_up_with_subqueries(|node| {
        if !expressions_contain(&node, |e| matches!(e, Expr::Placeholder(_)))? {
            return Ok(Transformed::no(node));
        }
        let names = NamePreserver::new(&node);
        node.map_expressions(|expr| {
            let name = names.save(&expr);
            let expr = with_parameter_values(expr, params)?;
            Ok(expr.update_data(|expr| name.restore(expr)))
        })
    })?;
    Ok(substituted.data)
}

/// An expression with its parameters replaced by these values.
pub(crate) fn with_parameter_values(
    expr: datafusion::logical_expr::Expr,
    params: &ParamValues,
) -> datafusion::common::Result<
    datafusion::common::tree_node::Transformed<datafusion::logical_expr::Expr>,
> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::Expr;
    expr.transform_up(|e| match e {
        Expr::Placeholder(placeholder) => {
            let (value, metadata) = params
                .get_placeholders_with_values(&placeholder.id)?
                .into_inner();
            Ok(Transformed::yes(Expr::Literal(value, metadata)))
        }
        other => Ok(Transformed::no(other)),
    })
}

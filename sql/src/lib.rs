//! Quiver's SQL layer: our statements on top of sqlparser, planning over DataFusion, and the
//! execution of DDL, writes and reads against the catalog and the offline store.
//!
//! Architecture invariant: this crate holds all feature-store semantics reachable from SQL; it
//! knows nothing of the wire protocol. The server hands it statements and streams back what
//! [`Output`] says.

mod access;
mod asof;
mod asof_exec;
pub mod audit;
mod binary_copy;
mod column_names;
mod copy;
mod copy_in;
mod cursor;
mod ddl;
mod discovery;
mod error;
mod feature_view;
mod kept_plan;
mod lookup;
mod models;
mod online;
mod online_group;
pub mod parser;
pub mod partitioning;
mod project_catalog;
mod relation;
mod serving;
mod session;
mod settings;
mod system_catalog;
mod training_dataset;
mod transaction;
pub mod types;

use std::path::Path;
use std::sync::Arc;

use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use quiver_catalog::{Applied, Catalog, CatalogCommand};
pub use quiver_storage::StoreLocation;
use quiver_storage::{OfflineStore, OnlineStore};

pub use column_names::display_name;
pub use copy::CopyFormat;
pub use copy_in::CopyIn;
pub use error::{SqlError, SqlResult};
pub use lookup::FoundRows;
pub use parser::{Statement, parse};
pub use session::{CommandTag, Output, Prepared, Session, is_read_only};
pub use settings::{SERVER_VERSION, Settings};

/// The directory of the data dir where training datasets are written before they are published.
pub(crate) const STAGING_DIR: &str = "staging";

/// Empties (or creates) a directory of the data dir.
fn fresh_dir(dir: &Path) -> SqlResult<std::path::PathBuf> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(SqlError::Internal(format!(
                "cannot clear {}: {e}",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| SqlError::Internal(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir.to_path_buf())
}

/// The tokio runtimes the engine runs work on, apart from the one serving connections.
#[derive(Debug, Clone)]
pub struct Runtimes {
    /// Queries, so a CPU-heavy query never starves the protocol (a CancelRequest must get
    /// through).
    pub executor: tokio::runtime::Handle,
    /// Work nobody waits for: prediction log writes (and the compactions of the logs they
    /// start, which run where the commit ran). The server runs it on threads of the lowest
    /// priority, so that this work takes the CPU serving leaves over rather than making the
    /// slowest requests. Nothing a statement waits for may run here: it would wait as long as
    /// the CPU is busy (an INSERT behind a compaction holding its table's writer lock).
    pub background: tokio::runtime::Handle,
}

/// Where the engine keeps its data, beyond the data directory.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The offline store's location; `<data dir>/offline` when `None`.
    pub offline_location: Option<StoreLocation>,
    /// The online store's block cache, shared by all online feature groups.
    pub online_cache_bytes: usize,
    /// The online store's row cache (0: none): rows of recent key lookups.
    pub online_row_cache_bytes: usize,
    /// Memory that running queries' sorts, joins and aggregations share; beyond it they spill
    /// to `<data dir>/spill`.
    pub query_memory_bytes: usize,
    /// Join the replicated catalog group as this member (`--node-id`, `--peers`); `None`: a
    /// single node with a local catalog log.
    pub cluster: Option<quiver_catalog::raft::NodeConfig>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            offline_location: None,
            online_cache_bytes: 256 << 20,
            online_row_cache_bytes: 0,
            query_memory_bytes: 4 << 30,
            cluster: None,
        }
    }
}

/// Everything sessions share: the catalog, the offline and online stores and the query runtime.
#[derive(Debug)]
pub struct Engine {
    pub catalog: Arc<Catalog>,
    /// DDL, access changes and failed logins.
    pub audit: audit::AuditLog,
    pub offline: Arc<OfflineStore>,
    pub online: Arc<OnlineStore>,
    /// On a cluster member, the data group that replicates the online store.
    online_group: Option<online_group::OnlineGroup>,
    runtime: Arc<RuntimeEnv>,
    target_partitions: usize,
    runtimes: Runtimes,
    system_catalog: system_catalog::SystemCatalog,
    data_dir: std::path::PathBuf,
    /// Fitted models, loaded from their artifacts on first use.
    models: models::ModelCache,
    /// Rows served by models, waiting to be written to their prediction logs.
    prediction_log: Arc<models::PredictionLog>,
    /// A multi-table COMMIT writes its tables under the write side; a query resolves the
    /// versions of the tables it reads (physical planning) under the read side, so it sees all
    /// of the COMMIT's tables or none.
    commit_gate: tokio::sync::RwLock<()>,
}

impl Engine {
    /// Opens the data directory: the catalog under `catalog/`, the online store under
    /// `online/`, the offline store under `offline/` unless the options put it elsewhere (another
    /// directory or S3). Storage is reconciled with the catalog first (see `ddl`'s order of
    /// effects), then the online store with the offline one (see `online::reconcile`).
    pub async fn open(
        data_dir: &Path,
        options: &EngineOptions,
        runtimes: Runtimes,
    ) -> SqlResult<Arc<Engine>> {
        let catalog = match &options.cluster {
            Some(config) => {
                Catalog::open_replicated(&data_dir.join("raft"), config.clone()).await?
            }
            None => Catalog::open(&data_dir.join("catalog"))?,
        };
        let online = OnlineStore::open_with_row_cache(
            &data_dir.join("online"),
            options.online_cache_bytes,
            options.online_row_cache_bytes,
        )
        .await?;
        // A cluster member's online store is the data group's state machine: its log is the
        // durable copy, and the machine syncs the store before it records what it applied.
        let online = match &options.cluster {
            Some(_) => Arc::new(online.without_synced_writes()),
            None => Arc::new(online),
        };
        let offline = match &options.offline_location {
            Some(location) => OfflineStore::open(location).await?,
            None => OfflineStore::open(&StoreLocation::local(&data_dir.join("offline"))).await?,
        };
        // Cluster members write the same offline tables; the first initial member compacts them.
        let offline = match &options.cluster {
            Some(config) => {
                let compacts = config.peers.keys().next() == Some(&config.node_id);
                offline.shared_with_other_writers(compacts)
            }
            None => offline,
        };
        let offline = Arc::new(offline);
        let catalog = Arc::new(catalog);
        let online_group = match catalog.node() {
            Some(node) => Some(
                online_group::OnlineGroup::start(
                    node,
                    catalog.clone(),
                    &data_dir.join("raft-online"),
                    offline.clone(),
                    online.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let snapshot = catalog.snapshot();
        // A cluster member shares the offline store and may be behind the catalog (or without a
        // quorum): a table it does not know may be another node's newest. Orphans of a cluster
        // cost disk only.
        if catalog.node().is_none() {
            let removed = offline
                .remove_orphans(|id| snapshot.relation(id).is_some())
                .await?;
            if !removed.is_empty() {
                tracing::info!(?removed, "removed offline tables the catalog does not know");
            }
        }
        for relation in snapshot.all_relations() {
            if !offline.has_table(relation.oid).await? {
                tracing::info!(relation = %relation.qualified_name(), "creating the missing offline table");
                {
                    let (schema, partition_columns) = partitioning::stored_schema(relation);
                    offline
                        .create_table(relation.oid, schema, &partition_columns)
                        .await?;
                }
            }
        }
        // Spill files of queries, and training dataset files being written, when the server
        // stopped are of no use to anyone.
        let spill = fresh_dir(&data_dir.join("spill"))?;
        fresh_dir(&data_dir.join(STAGING_DIR))?;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(options.query_memory_bytes)))
            .with_temp_file_path(spill)
            .build_arc()
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        let target_partitions = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let system_catalog = system_catalog::SystemCatalog::new()?;
        let audit = audit::AuditLog::open(data_dir)?;
        let engine = Arc::new_cyclic(|engine| Engine {
            catalog,
            audit,
            offline,
            online,
            online_group,
            runtime,
            target_partitions,
            runtimes,
            system_catalog,
            data_dir: data_dir.to_path_buf(),
            models: Default::default(),
            prediction_log: Arc::new(models::PredictionLog::new(engine.clone())),
            commit_gate: tokio::sync::RwLock::new(()),
        });
        // A cluster member's online store follows the data group, which reconciles it.
        if engine.online_group.is_none() {
            online::reconcile(&engine).await?;
            transaction::recover(&engine).await?;
        } else {
            // The online writes of a recovered commit go through the data group, which may have
            // no leader yet: finished in the background (the offline store is the durable copy).
            let recovering = engine.clone();
            tokio::spawn(async move {
                if let Err(e) = transaction::recover(&recovering).await {
                    tracing::error!(error = %e, "cannot finish an interrupted transaction block commit");
                }
            });
        }
        Ok(engine)
    }

    /// The query runtime shared by all sessions.
    pub fn runtime(&self) -> Arc<RuntimeEnv> {
        self.runtime.clone()
    }

    /// Applies a catalog command: through Raft on a cluster member, else off the async runtime
    /// (it waits for an fsync of the catalog log).
    pub async fn change_catalog(&self, command: CatalogCommand) -> SqlResult<Applied> {
        if self.catalog.node().is_some() {
            return self
                .catalog
                .execute_async(command)
                .await
                .map_err(SqlError::from);
        }
        let catalog = self.catalog.clone();
        tokio::task::spawn_blocking(move || catalog.execute(command))
            .await
            .map_err(|e| SqlError::Internal(format!("catalog task failed: {e}")))?
            .map_err(SqlError::from)
    }

    /// On a cluster member, waits until this node has applied every catalog change and online
    /// write the cluster committed before this call (both read-index rounds at once); a single
    /// node always has.
    pub(crate) async fn catch_up_with_cluster(&self) -> SqlResult<()> {
        let Some(group) = &self.online_group else {
            if self.catalog.node().is_some() {
                self.catalog.linearizable_snapshot().await?;
            }
            return Ok(());
        };
        let (catalog, online) =
            tokio::join!(self.catalog.linearizable_snapshot(), group.catch_up());
        catalog?;
        online
    }

    /// On a cluster member, the data group that replicates the online store.
    pub(crate) fn online_group(&self) -> Option<&online_group::OnlineGroup> {
        self.online_group.as_ref()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A query's physical plan and the task context to run it in. Making the plan fixes the
    /// versions of the tables the query reads, so it waits out a multi-table COMMIT that is
    /// writing: the query sees all of that COMMIT or none of it.
    pub(crate) async fn plan_physical(
        &self,
        query: impl Into<PlannedQuery>,
    ) -> datafusion::common::Result<(
        Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        Arc<datafusion::execution::TaskContext>,
    )> {
        let PlannedQuery { frame, optimized } = query.into();
        let task = Arc::new(frame.task_ctx());
        let _commits_wait = self.commit_gate.read().await;
        let physical = if optimized {
            let (state, plan) = frame.into_parts();
            state
                .query_planner()
                .create_physical_plan(&plan, &state)
                .await?
        } else {
            frame.create_physical_plan().await?
        };
        Ok((physical, task))
    }

    /// The runtime that executes queries.
    pub fn executor(&self) -> &tokio::runtime::Handle {
        &self.runtimes.executor
    }

    /// Writes what is waiting in memory to be written, the rows served since the last write of
    /// the prediction logs; a clean stop calls it once no session is left.
    pub async fn write_pending(&self) {
        self.prediction_log.flush(self).await;
    }

    /// The runtime of work nobody waits for (see [`Runtimes::background`]).
    pub fn background(&self) -> &tokio::runtime::Handle {
        &self.runtimes.background
    }

    /// How many partitions a query is split into.
    pub fn target_partitions(&self) -> usize {
        self.target_partitions
    }

    /// Opens a session for a user on a project.
    pub fn session(self: &Arc<Self>, project: &str, user: &str) -> SqlResult<Session> {
        Session::new(self.clone(), project, user)
    }
}

/// A query ready for physical planning.
pub(crate) struct PlannedQuery {
    pub frame: datafusion::dataframe::DataFrame,
    /// Whether the frame's plan is optimised already (once, when its statement was prepared,
    /// its parameters substituted since): it then goes to the physical planner as it is.
    pub optimized: bool,
}

impl From<datafusion::dataframe::DataFrame> for PlannedQuery {
    fn from(frame: datafusion::dataframe::DataFrame) -> Self {
        PlannedQuery {
            frame,
            optimized: false,
        }
    }
}

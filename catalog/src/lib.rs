//! Quiver's catalog: projects, users, feature groups and plain tables.
//!
//! Architecture invariant: the catalog changes only by applying a [`CatalogCommand`] that has first
//! been made durable in the command log. Readers take an immutable [`CatalogState`] snapshot, so a
//! query sees one consistent catalog even while DDL runs. This crate does no SQL and knows nothing of
//! storage; it only records what exists.

mod access;
mod error;
mod log;
mod model;
pub mod raft;
mod state;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use chrono::Utc;

pub use access::{Privilege, ProjectRole, ScramVerifier};
pub use error::{CatalogError, CatalogResult};
pub use model::*;
pub use state::{Applied, CatalogCommand, CatalogState, UserChange};

use log::CommandLog;

/// The superuser and project every fresh data directory starts with.
pub const BOOTSTRAP_NAME: &str = "quiver";

/// The catalog of one Quiver node: a local command log, or a member of the replicated catalog
/// group.
pub struct Catalog {
    backend: Backend,
}

enum Backend {
    /// A single node: the state, and the log that feeds it.
    Local {
        state: RwLock<Arc<CatalogState>>,
        /// Serialises writers; held across validate, append and publish so commands apply in
        /// log order.
        log: Mutex<CommandLog>,
    },
    /// A cluster member: the state is the Raft state machine's.
    Replicated(raft::CatalogNode),
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("applied_commands", &self.snapshot().applied_commands())
            .field("replicated", &self.node().is_some())
            .finish()
    }
}

/// The commands a fresh catalog starts with: the superuser `quiver` and the project `quiver`.
pub(crate) fn bootstrap_commands() -> [CatalogCommand; 2] {
    [
        CatalogCommand::CreateUser {
            name: BOOTSTRAP_NAME.into(),
            superuser: true,
            password: None,
            connection_limit: None,
        },
        CatalogCommand::CreateProject {
            name: BOOTSTRAP_NAME.into(),
            description: Some("the default project".into()),
            owner: BOOTSTRAP_NAME.into(),
            created_at: Utc::now(),
        },
    ]
}

impl Catalog {
    /// Opens the catalog stored in `dir`, replaying its log; a fresh directory is bootstrapped with
    /// the superuser `quiver` and the project `quiver`.
    pub fn open(dir: &Path) -> CatalogResult<Catalog> {
        std::fs::create_dir_all(dir).map_err(|source| CatalogError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let (log, commands) = CommandLog::open(&dir.join("catalog.log"))?;
        let mut state = CatalogState::new();
        for (index, command) in commands.iter().enumerate() {
            state.apply(command).map_err(|e| CatalogError::CorruptLog {
                path: dir.join("catalog.log").display().to_string(),
                entry: index as u64,
                message: format!("replaying {command:?}: {e}"),
            })?;
        }
        let catalog = Catalog {
            backend: Backend::Local {
                state: RwLock::new(Arc::new(state)),
                log: Mutex::new(log),
            },
        };
        if catalog.snapshot().applied_commands() == 0 {
            for command in bootstrap_commands() {
                catalog.execute(command)?;
            }
        }
        Ok(catalog)
    }

    /// Joins (or forms) the replicated catalog group with the Raft storage in `dir`. Returns
    /// without waiting for a quorum; in the background, the member with the lowest id bootstraps
    /// the catalog if nobody has, and each member registers its SQL address.
    pub async fn open_replicated(dir: &Path, config: raft::NodeConfig) -> CatalogResult<Catalog> {
        std::fs::create_dir_all(dir).map_err(|source| CatalogError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let node = raft::CatalogNode::start(dir, config).await?;
        Ok(Catalog {
            backend: Backend::Replicated(node),
        })
    }

    /// The cluster member this catalog is, when replicated.
    pub fn node(&self) -> Option<&raft::CatalogNode> {
        match &self.backend {
            Backend::Local { .. } => None,
            Backend::Replicated(node) => Some(node),
        }
    }

    /// The cluster member, to shut it down.
    pub fn into_node(self) -> Option<raft::CatalogNode> {
        match self.backend {
            Backend::Local { .. } => None,
            Backend::Replicated(node) => Some(node),
        }
    }

    /// The current catalog, unchanged by later commands. On a cluster member, as this node has
    /// applied it: call [`Catalog::linearizable_snapshot`] first for what every node agrees on.
    pub fn snapshot(&self) -> Arc<CatalogState> {
        match &self.backend {
            Backend::Local { state, .. } => match state.read() {
                Ok(guard) => guard.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            },
            Backend::Replicated(node) => node.local_state(),
        }
    }

    /// The catalog with every command committed before this call (a cluster member waits for
    /// the leader's read index); a single node's catalog is always that.
    pub async fn linearizable_snapshot(&self) -> CatalogResult<Arc<CatalogState>> {
        match &self.backend {
            Backend::Local { .. } => Ok(self.snapshot()),
            Backend::Replicated(node) => node.linearizable_state().await,
        }
    }

    /// Applies a command: on a single node, validated, made durable in the log, then published
    /// (a command that fails validation is never logged); on a cluster member, committed by a
    /// quorum and applied. Blocks: call it off the async runtime, or use
    /// [`Catalog::execute_async`].
    pub fn execute(&self, command: CatalogCommand) -> CatalogResult<Applied> {
        match &self.backend {
            Backend::Local { state, log } => {
                let mut log = match log.lock() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                let mut next = (*self.snapshot()).clone();
                let applied = next.apply(&command)?;
                log.append(&command)?;
                let mut state = match state.write() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *state = Arc::new(next);
                Ok(applied)
            }
            Backend::Replicated(node) => {
                tokio::runtime::Handle::current().block_on(node.execute(command))
            }
        }
    }

    /// [`Catalog::execute`] for async callers. On a single node it still waits for the log's
    /// fsync on the calling thread: callers that must not block use `spawn_blocking`.
    pub async fn execute_async(&self, command: CatalogCommand) -> CatalogResult<Applied> {
        match &self.backend {
            Backend::Local { .. } => self.execute(command),
            Backend::Replicated(node) => node.execute(command).await,
        }
    }
}

#[cfg(test)]
mod tests;

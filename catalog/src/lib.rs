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

/// The catalog of one Quiver node: the current state and the log that feeds it.
pub struct Catalog {
    state: RwLock<Arc<CatalogState>>,
    /// Serialises writers; held across validate, append and publish so commands apply in log order.
    log: Mutex<CommandLog>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("applied_commands", &self.snapshot().applied_commands())
            .finish()
    }
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
            state: RwLock::new(Arc::new(state)),
            log: Mutex::new(log),
        };
        if catalog.snapshot().applied_commands() == 0 {
            catalog.execute(CatalogCommand::CreateUser {
                name: BOOTSTRAP_NAME.into(),
                superuser: true,
                password: None,
                connection_limit: None,
            })?;
            catalog.execute(CatalogCommand::CreateProject {
                name: BOOTSTRAP_NAME.into(),
                description: Some("the default project".into()),
                owner: BOOTSTRAP_NAME.into(),
                created_at: Utc::now(),
            })?;
        }
        Ok(catalog)
    }

    /// The current catalog, unchanged by later commands.
    pub fn snapshot(&self) -> Arc<CatalogState> {
        match self.state.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Validates a command against the current state, makes it durable, then publishes the new
    /// state. A command that fails validation is never logged.
    pub fn execute(&self, command: CatalogCommand) -> CatalogResult<Applied> {
        let mut log = match self.log.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = (*self.snapshot()).clone();
        let applied = next.apply(&command)?;
        log.append(&command)?;
        let mut state = match self.state.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *state = Arc::new(next);
        Ok(applied)
    }
}

#[cfg(test)]
mod tests;

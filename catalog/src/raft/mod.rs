//! The catalog as a Raft-replicated state machine (openraft 0.9, storage v2).
//!
//! The log entries are [`CatalogCommand`]s and the state machine is [`CatalogState`]: the same
//! deterministic `apply` the local command log feeds, so a cluster and a single node build the
//! same catalog from the same commands. Everything Raft keeps lives in one RocksDB under the
//! node's data directory (`raft/`): the log, the vote, the committed id and the last snapshot.
//!
//! `node.rs` runs `openraft::Raft` over this storage and `network.rs`'s gRPC transport (tonic):
//! nodes started with the same peers form the group, a follower forwards commands to the
//! leader, and reads can be linearizable (read-index).

mod log_store;
pub mod network;
mod node;
mod state_machine;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Options};
use serde::{Deserialize, Serialize};

pub use log_store::LogStore;
pub use node::{CatalogNode, MemberStatus, MembershipChange, NodeConfig, Replica};
pub use state_machine::StateMachineStore;

use crate::error::{CatalogError, CatalogResult};
use crate::state::{Applied, CatalogCommand};

/// A cluster member: where its peers reach its Raft service and where clients reach its SQL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub raft_addr: String,
    pub sql_addr: String,
}

/// What applying one log entry gave: the command's result, or why the state machine refused it
/// (a command can be valid when proposed and stale when applied, after a concurrent one).
pub type CommandOutcome = Result<Applied, String>;

openraft::declare_raft_types!(
    /// openraft's types for the catalog group.
    pub CatalogRaft:
        D = CatalogCommand,
        R = CommandOutcome,
        NodeId = u64,
        Node = ClusterNode,
        Entry = openraft::Entry<CatalogRaft>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Column family of the log entries, keyed by big-endian index (so iteration is in log order).
const LOGS: &str = "logs";
/// Column family of the vote, the committed log id, the last purged log id and the snapshot.
const META: &str = "meta";

/// Opens (or creates) the Raft storage in `dir`: the log store and the state machine, restored
/// from the last snapshot (openraft re-applies the committed entries after it).
pub fn open(dir: &Path) -> CatalogResult<(LogStore, StateMachineStore)> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let families = [LOGS, META].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&options, dir, families).map_err(|e| CatalogError::Io {
        path: dir.display().to_string(),
        source: std::io::Error::other(e),
    })?;
    let db = Arc::new(db);
    let state_machine = StateMachineStore::open(db.clone()).map_err(|e| CatalogError::Io {
        path: dir.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok((LogStore::new(db), state_machine))
}

/// Writes that must be on disk before Raft is told they are: votes, appends, truncations,
/// snapshots (the RocksDB WAL is synced).
fn durable() -> rocksdb::WriteOptions {
    let mut options = rocksdb::WriteOptions::default();
    options.set_sync(true);
    options
}

fn column<'a>(
    db: &'a DB,
    name: &str,
) -> Result<Arc<rocksdb::BoundColumnFamily<'a>>, std::io::Error> {
    db.cf_handle(name)
        .ok_or_else(|| std::io::Error::other(format!("the Raft store has no column family {name}")))
}

#[cfg(test)]
mod tests;

//! The cluster's Raft groups (openraft 0.9, storage v2): the catalog group, and the machinery any
//! other group of the cluster (the online store's data group, defined by the `sql` crate) runs on.
//!
//! The catalog group's log entries are [`CatalogCommand`]s and its state machine is
//! [`CatalogState`]: the same deterministic `apply` the local command log feeds, so a cluster and
//! a single node build the same catalog from the same commands. Everything a group keeps lives in
//! one RocksDB per group under the node's data directory ([`RaftDb`]): the log, the vote, the
//! committed id and what its state machine needs to restart.
//!
//! `group.rs` runs one `openraft::Raft` of any [`GroupTypes`] (proposals forwarded to the leader,
//! linearizable reads, membership); `network.rs` is the gRPC transport (tonic), one service per
//! node that carries every group's messages; `node.rs` runs the catalog group and that service.

mod group;
mod log_store;
pub mod network;
mod node;
mod snapshot;
mod state_machine;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Options};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use group::{GroupSettings, MemberStatus, MembershipChange, RaftGroup};
pub use log_store::LogStore;
pub use network::{GroupRegistry, GroupService, Transport, TransportTls};
pub use node::{CatalogNode, NodeConfig, Replica};
pub use snapshot::SnapshotStore;
pub use state_machine::StateMachineStore;

use crate::error::{CatalogError, CatalogResult};
use crate::state::{Applied, CatalogCommand};

/// A cluster member: where its peers reach its Raft service and where clients reach its SQL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub raft_addr: String,
    pub sql_addr: String,
}

/// Checks that `addr` is a Raft address peers can dial: `host:port`.
pub fn check_raft_addr(addr: &str) -> Result<(), String> {
    let valid = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid {
        Ok(())
    } else {
        Err(format!("\"{addr}\" is not a Raft address (host:port)"))
    }
}

/// Which Raft group a message is for. Every node runs every group, over one gRPC service.
pub type GroupId = u32;

/// The catalog group's id.
pub const CATALOG_GROUP: GroupId = 0;

/// The id of the first data group (the online store's shard 0).
pub const FIRST_DATA_GROUP: GroupId = 1;

/// What every group of the cluster has in common: members are [`ClusterNode`]s by `u64` id,
/// entries are openraft's, snapshots are held in memory (a group keeps its bulk data elsewhere:
/// the catalog is small, the online store's snapshot names offline versions).
pub trait GroupTypes:
    openraft::RaftTypeConfig<
        NodeId = u64,
        Node = ClusterNode,
        Entry = openraft::Entry<Self>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<Self>,
        D: Clone,
    >
{
    /// The group's name in messages ("the catalog group").
    const NAME: &'static str;
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

impl GroupTypes for CatalogRaft {
    const NAME: &'static str = "catalog group";
}

/// Column family of the log entries, keyed by big-endian index (so iteration is in log order).
const LOGS: &str = "logs";
/// Column family of the vote, the committed log id, the last purged log id and what the state
/// machine keeps (its snapshot, its applied state).
const META: &str = "meta";

/// One group's RocksDB: its log and its metadata.
#[derive(Debug, Clone)]
pub struct RaftDb {
    db: Arc<DB>,
}

impl RaftDb {
    /// Opens (or creates) a group's database in `dir`.
    pub fn open(dir: &Path) -> CatalogResult<RaftDb> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let families =
            [LOGS, META].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db =
            DB::open_cf_descriptors(&options, dir, families).map_err(|e| CatalogError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::other(e),
            })?;
        Ok(RaftDb { db: Arc::new(db) })
    }

    /// The metadata value under `key`, decoded from JSON.
    pub fn meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, std::io::Error> {
        let family = self.family(META)?;
        match self
            .db
            .get_cf(&family, key)
            .map_err(std::io::Error::other)?
        {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(std::io::Error::other),
            None => Ok(None),
        }
    }

    /// Stores a metadata value as JSON; `synced` waits for it to be on disk.
    pub fn put_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        synced: bool,
    ) -> Result<(), std::io::Error> {
        let family = self.family(META)?;
        let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(synced);
        self.db
            .put_cf_opt(&family, key, bytes, &options)
            .map_err(std::io::Error::other)
    }

    fn family(&self, name: &str) -> Result<Arc<rocksdb::BoundColumnFamily<'_>>, std::io::Error> {
        self.db.cf_handle(name).ok_or_else(|| {
            std::io::Error::other(format!("the Raft store has no column family {name}"))
        })
    }
}

/// Opens (or creates) the catalog group's storage in `dir`: the log store and the state machine,
/// restored from the last snapshot (openraft re-applies the committed entries after it).
pub fn open(dir: &Path) -> CatalogResult<(LogStore<CatalogRaft>, StateMachineStore)> {
    let db = RaftDb::open(dir)?;
    let state_machine = StateMachineStore::open(db.clone()).map_err(|e| CatalogError::Io {
        path: dir.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok((LogStore::new(db), state_machine))
}

#[cfg(test)]
mod tests;

//! The online store of a cluster: a Raft group of its own (the data group, separate from the
//! catalog's), whose state machine is every node's RocksDB online store.
//!
//! The offline store is shared by all nodes and stays the ingestion log; the data group orders
//! what each offline commit does to the online store. A writer commits offline (version `v` of
//! table `t`), then proposes `Commit { t, v, change }` with the commit's rows (or deleted keys)
//! when they are small, and waits until a quorum has it and this node has applied it before it
//! acknowledges the statement. Every node applies every entry to its own RocksDB, so any node
//! serves any key and losing a node loses nothing acknowledged.
//!
//! The state machine keeps, per online table, the offline version applied (in RocksDB, written
//! with the rows it covers), and applies an entry only in version order: `v` right after the
//! applied version is applied from the entry; an older `v` is already applied (another writer's
//! later commit, or a catch-up, covered it); a newer `v` leaves a gap (a commit whose writer
//! proposed it later, or crashed before proposing, or a compaction), which is filled from the
//! offline store at exactly version `v`, so every node computes the same rows. Which row wins per
//! key depends only on (event time, sequence), so applying a row twice is harmless.
//!
//! The data group's snapshot is small: each online table's layout and applied offline version.
//! Installing it rebuilds a table from the offline store at that version (Delta time travel),
//! unless this node already has it at that version.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use quiver_catalog::raft::{
    CatalogNode, ClusterNode, FIRST_DATA_GROUP, GroupTypes, LogStore, RaftDb, RaftGroup,
};
use quiver_catalog::{CatalogState, Column, Relation};
use quiver_storage::{OfflineStore, OnlineLayout, OnlineStore};
use serde::{Deserialize, Serialize};

use crate::error::{SqlError, SqlResult};
use crate::online::layout_of;

mod state_machine;
#[cfg(test)]
mod tests;

use state_machine::OnlineStateMachine;

/// Rows (or keys) of one commit travel in its log entry up to this size (Arrow IPC); a bigger
/// commit is read by every node from the offline store, where it already is.
const MAX_ROWS_IN_ENTRY: usize = 256 << 10;

/// How often the data group's leader looks for offline commits the online store lacks (a writer
/// that crashed between its offline commit and its proposal).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

/// What applying one entry gave: nothing, or why this node could not apply it (it stays behind
/// on that table until a later entry fills the gap).
pub type OnlineOutcome = Result<(), String>;

openraft::declare_raft_types!(
    /// openraft's types for the data group.
    pub OnlineRaft:
        D = OnlineCommand,
        R = OnlineOutcome,
        NodeId = u64,
        Node = ClusterNode,
        Entry = openraft::Entry<OnlineRaft>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

impl GroupTypes for OnlineRaft {
    const NAME: &'static str = "online store's data group";
}

/// How the online store sees a feature group: enough to rebuild its layout on any node, whatever
/// that node's catalog has applied yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineTableSpec {
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    pub event_time: Option<String>,
}

impl OnlineTableSpec {
    /// The spec of a feature group; `None` for a plain table.
    pub fn of(relation: &Relation) -> Option<OnlineTableSpec> {
        relation.feature_group().map(|spec| OnlineTableSpec {
            columns: relation.columns.clone(),
            primary_key: relation.primary_key.clone(),
            event_time: spec.event_time.clone(),
        })
    }

    fn layout(&self) -> SqlResult<OnlineLayout> {
        layout_of(&self.columns, &self.primary_key, self.event_time.as_deref())
    }
}

/// An entry of the data group's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OnlineCommand {
    /// Feature group `table` goes online: its online table is built from the offline table at
    /// `version` (or at a later version some commit entry already named).
    Enable {
        table: u32,
        spec: OnlineTableSpec,
        version: u64,
    },
    /// Feature group `table` goes offline only (or is dropped): its online table is dropped.
    Disable { table: u32 },
    /// Offline commit `version` of feature group `table`.
    Commit {
        table: u32,
        version: u64,
        spec: OnlineTableSpec,
        change: Change,
    },
}

/// What an offline commit did, as its writer tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// It appended these rows (the group's columns, Arrow IPC stream, in commit order).
    Rows(#[serde(with = "base64_bytes")] Vec<u8>),
    /// It deleted every row of these keys (the key columns, Arrow IPC stream).
    Deleted(#[serde(with = "base64_bytes")] Vec<u8>),
    /// The writer did not send it (too big, or the group was not online when it wrote): read it
    /// from the offline store.
    Unknown,
}

/// Arrow IPC bytes as base64 in the log's JSON (a JSON array of numbers would be four times as
/// big).
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// `batches` as an Arrow IPC stream, if there is at least one.
fn to_ipc(batches: &[RecordBatch]) -> SqlResult<Option<Vec<u8>>> {
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    let mut writer = StreamWriter::try_new(&mut bytes, first.schema_ref())
        .map_err(|e| SqlError::Internal(e.to_string()))?;
    for batch in batches {
        writer
            .write(batch)
            .map_err(|e| SqlError::Internal(e.to_string()))?;
    }
    writer
        .finish()
        .map_err(|e| SqlError::Internal(e.to_string()))?;
    drop(writer);
    Ok(Some(bytes))
}

fn from_ipc(bytes: &[u8]) -> SqlResult<Vec<RecordBatch>> {
    StreamReader::try_new(bytes, None)
        .and_then(|reader| reader.collect::<Result<Vec<_>, _>>())
        .map_err(|e| SqlError::Internal(format!("a data group entry's rows: {e}")))
}

/// What the writer of an offline commit hands over.
pub enum CommitChange {
    Rows(Vec<RecordBatch>),
    Deleted(Vec<RecordBatch>),
}

impl Change {
    /// The entry's change for a commit of a group that is online (as the writer's catalog says):
    /// the rows or keys themselves when they are small enough.
    fn of(change: CommitChange, online: bool) -> SqlResult<Change> {
        if !online {
            return Ok(Change::Unknown);
        }
        let (batches, rows): (Vec<RecordBatch>, bool) = match change {
            CommitChange::Rows(batches) => (batches, true),
            CommitChange::Deleted(batches) => (batches, false),
        };
        let size: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
        if size > MAX_ROWS_IN_ENTRY {
            return Ok(Change::Unknown);
        }
        Ok(match to_ipc(&batches)? {
            Some(bytes) if rows => Change::Rows(bytes),
            Some(bytes) => Change::Deleted(bytes),
            None => Change::Unknown,
        })
    }
}

/// This node's member of the data group, and its background reconciliation.
pub struct OnlineGroup {
    group: RaftGroup<OnlineRaft>,
    reconcile: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for OnlineGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineGroup")
            .field("node_id", &self.group.node_id())
            .finish()
    }
}

impl Drop for OnlineGroup {
    fn drop(&mut self) {
        self.reconcile.abort();
    }
}

impl OnlineGroup {
    /// Starts this node's member of the data group with its storage in `dir`, serves it to the
    /// peers, and initialises it on the node that initialises the cluster.
    pub async fn start(
        node: &CatalogNode,
        catalog: Arc<quiver_catalog::Catalog>,
        dir: &Path,
        offline: Arc<OfflineStore>,
        online: Arc<OnlineStore>,
    ) -> SqlResult<OnlineGroup> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SqlError::Internal(format!("cannot create {}: {e}", dir.display())))?;
        let db = RaftDb::open(dir)?;
        let state_machine = OnlineStateMachine::open(db.clone(), offline.clone(), online.clone())?;
        let config = node.config();
        let group = RaftGroup::start(
            FIRST_DATA_GROUP,
            config.node_id,
            config.settings,
            config.transport(),
            LogStore::<OnlineRaft>::new(db),
            state_machine,
        )
        .await?;
        node.groups()
            .register(FIRST_DATA_GROUP, Arc::new(group.clone()));
        if config.initialises() {
            group.initialize(config.peers.clone()).await?;
        }
        let reconcile = tokio::spawn(reconcile_forever(group.clone(), catalog, offline, online));
        Ok(OnlineGroup { group, reconcile })
    }

    /// The group's member.
    pub fn group(&self) -> &RaftGroup<OnlineRaft> {
        &self.group
    }

    /// The group that serves `table`'s keys, by the catalog's shard map.
    fn serving(&self, catalog: &CatalogState) -> SqlResult<&RaftGroup<OnlineRaft>> {
        match catalog.shards() {
            [shard] if shard.raft_group == FIRST_DATA_GROUP => Ok(&self.group),
            [] => Err(SqlError::Catalog(
                quiver_catalog::CatalogError::Unavailable(
                    "the cluster has not defined its shards yet (is it still forming?)".into(),
                ),
            )),
            _ => Err(SqlError::NotSupported(
                "the shard map has several shards; this release serves one".into(),
            )),
        }
    }

    /// Proposes a command to the group of `table` and waits until this node has applied it.
    pub async fn propose(&self, catalog: &CatalogState, command: OnlineCommand) -> SqlResult<()> {
        self.serving(catalog)?.propose(command).await?.map_err(|e| {
            SqlError::Internal(format!(
                "the write is committed offline, but the online store did not apply it: \
                     {e}; a later write of the group, or the data group's reconciliation within \
                     seconds, applies it"
            ))
        })
    }

    /// Proposes offline commit `version` of `relation`: `change` travels in the entry when the
    /// group is online and it is small.
    pub async fn commit(
        &self,
        catalog: &CatalogState,
        relation: &Relation,
        version: u64,
        change: CommitChange,
    ) -> SqlResult<()> {
        let Some(spec) = OnlineTableSpec::of(relation) else {
            return Ok(());
        };
        let online = relation
            .feature_group()
            .is_some_and(|group| group.options.online);
        let command = OnlineCommand::Commit {
            table: relation.oid,
            version,
            spec,
            change: Change::of(change, online)?,
        };
        self.propose(catalog, command).await
    }

    /// Waits until this node has applied every online write committed before this call.
    pub async fn catch_up(&self) -> SqlResult<()> {
        Ok(self.group.catch_up().await?)
    }
}

/// On the group's leader, every [`RECONCILE_INTERVAL`]: proposes the newest offline version of
/// each online table whose online store is behind it (a writer that crashed between its offline
/// commit and its proposal leaves such a gap).
async fn reconcile_forever(
    group: RaftGroup<OnlineRaft>,
    catalog: Arc<quiver_catalog::Catalog>,
    offline: Arc<OfflineStore>,
    online: Arc<OnlineStore>,
) {
    loop {
        tokio::time::sleep(RECONCILE_INTERVAL).await;
        if !group.is_leader() {
            continue;
        }
        let snapshot = catalog.snapshot();
        for relation in snapshot.all_relations() {
            if !relation
                .feature_group()
                .is_some_and(|group| group.options.online)
            {
                continue;
            }
            let behind = async {
                let latest = offline.version(relation.oid).await?;
                let applied = match online.has_table(relation.oid) {
                    true => online.applied_version(relation.oid).await?,
                    false => None,
                };
                SqlResult::Ok((applied.is_none_or(|applied| applied < latest)).then_some(latest))
            }
            .await;
            let latest = match behind {
                Ok(Some(latest)) => latest,
                Ok(None) => continue,
                Err(e) => {
                    tracing::info!(error = %e, relation = %relation.qualified_name(), "the data group's reconciliation could not compare the stores");
                    continue;
                }
            };
            let Some(spec) = OnlineTableSpec::of(relation) else {
                continue;
            };
            let command = OnlineCommand::Commit {
                table: relation.oid,
                version: latest,
                spec,
                change: Change::Unknown,
            };
            if let Err(e) = group.propose(command).await {
                tracing::info!(error = %e, relation = %relation.qualified_name(), "the data group's reconciliation could not propose");
            }
        }
    }
}

//! The data group's state machine: this node's RocksDB online store, fed by the group's log in
//! version order per table, with gaps filled from the shared offline store.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use quiver_catalog::raft::{ClusterNode, RaftDb, SnapshotStore};
use quiver_storage::{OfflineStore, OnlineStore};
use serde::{Deserialize, Serialize};

use super::{Change, OnlineCommand, OnlineOutcome, OnlineRaft, OnlineTableSpec, from_ipc};
use crate::error::{SqlError, SqlResult};
use crate::online::{apply_commit, column_names, replay};

/// The state machine's state besides the online store's rows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct MachineState {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, ClusterNode>,
    /// The online tables, with the spec of the newest commit applied.
    tables: BTreeMap<u32, OnlineTableSpec>,
    /// The newest offline version any commit entry named, per feature group (online or not):
    /// a group going online is built at least that far.
    seen: BTreeMap<u32, u64>,
}

/// A snapshot: the state, and each online table's applied offline version.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotData {
    state: MachineState,
    applied: BTreeMap<u32, u64>,
}

const STATE: &[u8] = b"online_state";

type StoreResult<T> = Result<T, StorageError<u64>>;

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The data group's state machine: this node's online store.
pub struct OnlineStateMachine {
    db: RaftDb,
    snapshots: SnapshotStore,
    offline: Arc<OfflineStore>,
    online: Arc<OnlineStore>,
    state: MachineState,
}

impl OnlineStateMachine {
    pub(super) fn open(
        db: RaftDb,
        offline: Arc<OfflineStore>,
        online: Arc<OnlineStore>,
    ) -> SqlResult<OnlineStateMachine> {
        let state = db
            .meta(STATE)
            .map_err(|e| SqlError::Internal(format!("the data group's state: {e}")))?
            .unwrap_or_default();
        Ok(OnlineStateMachine {
            snapshots: SnapshotStore::new(db.clone()),
            db,
            offline,
            online,
            state,
        })
    }

    /// Applies one command. An error leaves the table's applied version where it was, so the
    /// next commit entry of that table fills the gap from the offline store.
    async fn apply_command(&mut self, command: OnlineCommand) -> SqlResult<()> {
        match command {
            OnlineCommand::Enable {
                table,
                spec,
                version,
            } => {
                let at = version.max(self.state.seen.get(&table).copied().unwrap_or(0));
                self.state.tables.insert(table, spec.clone());
                self.rebuild(table, &spec, at).await
            }
            OnlineCommand::Disable { table } => {
                // Commit entries name the group's versions again from now on, so an Enable
                // after this one still sees every commit that raced with it.
                self.state.tables.remove(&table);
                self.state.seen.remove(&table);
                Ok(self.online.drop_table(table).await?)
            }
            OnlineCommand::Commit {
                table,
                version,
                spec,
                change,
            } => {
                let seen = self.state.seen.entry(table).or_default();
                *seen = (*seen).max(version);
                if !self.state.tables.contains_key(&table) {
                    return Ok(());
                }
                let applied = match self.online.has_table(table) {
                    true => self.online.applied_version(table).await?,
                    false => None,
                };
                let Some(applied) = applied else {
                    // Never built here (its build failed): build it now.
                    self.state.tables.insert(table, spec.clone());
                    return self.rebuild(table, &spec, version).await;
                };
                if version <= applied {
                    return Ok(());
                }
                self.state.tables.insert(table, spec.clone());
                let layout = spec.layout()?;
                match change {
                    Change::Rows(bytes) if version == applied + 1 => {
                        let rows = from_ipc(&bytes)?;
                        Ok(apply_commit(&self.online, table, &layout, rows, version).await?)
                    }
                    Change::Deleted(bytes) if version == applied + 1 => {
                        let keys = from_ipc(&bytes)?;
                        let Some(first) = keys.first() else {
                            return Ok(self.online.set_applied_version(table, version).await?);
                        };
                        let keys =
                            datafusion::arrow::compute::concat_batches(first.schema_ref(), &keys)
                                .map_err(|e| SqlError::Internal(e.to_string()))?;
                        self.online
                            .delete(table, &layout, keys.columns().to_vec(), version)
                            .await?;
                        Ok(())
                    }
                    _ => self.fill(table, &spec, applied, version).await,
                }
            }
        }
    }

    /// Applies offline commits `after+1 ..= through` of `table` from the offline store: the rows
    /// they added, or, if one of them deleted rows, the whole table again at `through`.
    async fn fill(
        &self,
        table: u32,
        spec: &OnlineTableSpec,
        after: u64,
        through: u64,
    ) -> SqlResult<()> {
        let operations = self
            .offline
            .operations_between(table, after, Some(through))
            .await?;
        if operations.iter().any(|op| op == "DELETE") {
            return self.rebuild(table, spec, through).await;
        }
        self.replay(table, spec, Some(after), through).await
    }

    /// Builds `table` afresh from the offline table at version `at`.
    async fn rebuild(&self, table: u32, spec: &OnlineTableSpec, at: u64) -> SqlResult<()> {
        self.online.create_table(table).await?;
        self.replay(table, spec, None, at).await
    }

    /// Applies the rows of `table` at offline version `at` whose commit is past `after` (all
    /// for `None`), and records `at` as applied.
    async fn replay(
        &self,
        table: u32,
        spec: &OnlineTableSpec,
        after: Option<u64>,
        at: u64,
    ) -> SqlResult<()> {
        let columns = column_names(&spec.columns);
        let layout = spec.layout()?;
        replay(
            &self.offline,
            &self.online,
            table,
            &columns,
            &layout,
            after,
            Some(at),
        )
        .await
    }

    /// Makes the rows applied so far durable, then records how far the machine got (a crash
    /// in between replays entries, which is harmless).
    async fn persist(&self) -> Result<(), std::io::Error> {
        self.online.sync().await.map_err(io_error)?;
        self.db.put_meta(STATE, &self.state, false)
    }

    async fn applied_versions(&self) -> BTreeMap<u32, u64> {
        let mut applied = BTreeMap::new();
        for table in self.state.tables.keys() {
            if self.online.has_table(*table)
                && let Ok(Some(version)) = self.online.applied_version(*table).await
            {
                applied.insert(*table, version);
            }
        }
        applied
    }
}

/// Builds the data group's snapshot from the state captured when it was asked for.
pub struct OnlineSnapshotBuilder {
    snapshots: SnapshotStore,
    data: SnapshotData,
}

impl RaftSnapshotBuilder<OnlineRaft> for OnlineSnapshotBuilder {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<OnlineRaft>> {
        let state = &self.data.state;
        let data =
            serde_json::to_vec(&self.data).map_err(|e| StorageIOError::read_state_machine(&e))?;
        self.snapshots
            .save(state.last_applied, state.last_membership.clone(), data)
    }
}

impl RaftStateMachine<OnlineRaft> for OnlineStateMachine {
    type SnapshotBuilder = OnlineSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<u64>>, StoredMembership<u64, ClusterNode>)> {
        Ok((self.state.last_applied, self.state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<OnlineOutcome>>
    where
        I: IntoIterator<Item = Entry<OnlineRaft>> + Send,
        I::IntoIter: Send,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            self.state.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Ok(()),
                EntryPayload::Normal(command) => {
                    self.apply_command(command).await.map_err(|e| {
                        tracing::warn!(error = %e, "the online store could not apply a data group entry; a later commit of the table fills the gap");
                        e.to_string()
                    })
                }
                EntryPayload::Membership(membership) => {
                    self.state.last_membership =
                        StoredMembership::new(Some(entry.log_id), membership);
                    Ok(())
                }
            };
            outcomes.push(outcome);
        }
        self.persist()
            .await
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> OnlineSnapshotBuilder {
        OnlineSnapshotBuilder {
            snapshots: self.snapshots.clone(),
            data: SnapshotData {
                state: self.state.clone(),
                applied: self.applied_versions().await,
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, ClusterNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let bytes = snapshot.into_inner();
        let read_error = |e: &dyn std::fmt::Display| {
            StorageIOError::read_snapshot(Some(meta.signature()), &io_error(e))
        };
        let data: SnapshotData = serde_json::from_slice(&bytes).map_err(|e| read_error(&e))?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            tables = data.state.tables.len(),
            "installing a snapshot of the online store: building its tables from the offline store"
        );
        let local = self.applied_versions().await;
        for table in self.online.tables().await.map_err(|e| read_error(&e))? {
            if !data.state.tables.contains_key(&table) {
                self.online
                    .drop_table(table)
                    .await
                    .map_err(|e| read_error(&e))?;
            }
        }
        for (table, spec) in &data.state.tables {
            match data.applied.get(table) {
                // A table this node has at the same version has the same rows.
                Some(version) if local.get(table) == Some(version) => {}
                Some(version) => self
                    .rebuild(*table, spec, *version)
                    .await
                    .map_err(|e| read_error(&e))?,
                // Not built on the node that made the snapshot: the next commit builds it.
                None => self
                    .online
                    .drop_table(*table)
                    .await
                    .map_err(|e| read_error(&e))?,
            }
        }
        self.state = data.state;
        self.state.last_applied = meta.last_log_id;
        self.state.last_membership = meta.last_membership.clone();
        self.persist()
            .await
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        self.snapshots.save_received(meta, &bytes)
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<OnlineRaft>>> {
        self.snapshots.current()
    }
}

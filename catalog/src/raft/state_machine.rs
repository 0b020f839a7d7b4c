//! The catalog state machine: a [`CatalogState`] plus what Raft needs to know of it, with its
//! snapshots kept in RocksDB.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::snapshot::SnapshotStore;
use super::{CatalogRaft, ClusterNode, CommandOutcome, RaftDb};
use crate::state::{Applied, CatalogState};

type StoreResult<T> = Result<T, StorageError<u64>>;

/// The replicated state: the catalog and the last entry applied to it.
#[derive(Debug, Clone)]
struct AppliedState {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, ClusterNode>,
    /// Shared with readers' snapshots; applying copies it only while a reader holds one.
    catalog: Arc<CatalogState>,
}

impl Default for AppliedState {
    fn default() -> Self {
        AppliedState {
            last_applied: None,
            last_membership: StoredMembership::default(),
            // OIDs start where PostgreSQL's user objects do, as on a single node.
            catalog: Arc::new(CatalogState::new()),
        }
    }
}

/// [`AppliedState`] as a snapshot stores it.
#[derive(Serialize)]
struct AppliedStateRef<'a> {
    last_applied: &'a Option<LogId<u64>>,
    last_membership: &'a StoredMembership<u64, ClusterNode>,
    catalog: &'a CatalogState,
}

#[derive(Deserialize)]
struct AppliedStateOwned {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, ClusterNode>,
    catalog: CatalogState,
}

impl AppliedState {
    fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&AppliedStateRef {
            last_applied: &self.last_applied,
            last_membership: &self.last_membership,
            catalog: &self.catalog,
        })
    }

    fn from_bytes(bytes: &[u8]) -> Result<AppliedState, serde_json::Error> {
        let owned: AppliedStateOwned = serde_json::from_slice(bytes)?;
        Ok(AppliedState {
            last_applied: owned.last_applied,
            last_membership: owned.last_membership,
            catalog: Arc::new(owned.catalog),
        })
    }
}

/// The catalog group's state machine; clones share the state (a clone builds snapshots).
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    snapshots: SnapshotStore,
    state: Arc<RwLock<AppliedState>>,
}

impl StateMachineStore {
    /// The state machine as of the last snapshot in `db` (empty without one).
    pub(super) fn open(db: RaftDb) -> Result<Self, std::io::Error> {
        let store = StateMachineStore {
            snapshots: SnapshotStore::new(db),
            state: Arc::default(),
        };
        if let Some(data) = store.snapshots.current_data()? {
            let restored = AppliedState::from_bytes(&data).map_err(std::io::Error::other)?;
            *store.write() = restored;
        }
        Ok(store)
    }

    /// The catalog as applied so far.
    pub fn catalog(&self) -> Arc<CatalogState> {
        self.read().catalog.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, AppliedState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, AppliedState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftSnapshotBuilder<CatalogRaft> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<CatalogRaft>> {
        let (data, last_applied, last_membership) = {
            let state = self.read();
            let data = state
                .to_bytes()
                .map_err(|e| StorageIOError::read_state_machine(&e))?;
            (data, state.last_applied, state.last_membership.clone())
        };
        self.snapshots.save(last_applied, last_membership, data)
    }
}

impl RaftStateMachine<CatalogRaft> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<u64>>, StoredMembership<u64, ClusterNode>)> {
        let state = self.read();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<CommandOutcome>>
    where
        I: IntoIterator<Item = Entry<CatalogRaft>> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.write();
        let mut outcomes = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Ok(Applied::Nothing),
                // A refused command changes nothing (apply checks before it changes) and
                // reports why to whoever proposed it; the log moves on.
                EntryPayload::Normal(command) => Arc::make_mut(&mut state.catalog)
                    .apply(&command)
                    .map_err(|e| e.to_string()),
                EntryPayload::Membership(membership) => {
                    state.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(Applied::Nothing)
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, ClusterNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let installed = AppliedState::from_bytes(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.snapshots.save_received(meta, &data)?;
        *self.write() = installed;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<CatalogRaft>>> {
        self.snapshots.current()
    }
}

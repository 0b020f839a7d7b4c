//! Where a group keeps its last snapshot: one value in its [`RaftDb`], written synced.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::Snapshot;
use openraft::{LogId, SnapshotMeta, StorageError, StorageIOError, StoredMembership};
use serde::{Deserialize, Serialize};

use super::{ClusterNode, GroupTypes, RaftDb};

const SNAPSHOT: &[u8] = b"snapshot";

/// A snapshot as stored: its metadata and the state machine's bytes.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, ClusterNode>,
    data: Vec<u8>,
}

/// A group's last snapshot; clones share the store.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    db: RaftDb,
    /// Tells apart snapshots built at the same log id.
    built: Arc<AtomicU64>,
}

impl SnapshotStore {
    pub fn new(db: RaftDb) -> SnapshotStore {
        SnapshotStore {
            db,
            built: Arc::default(),
        }
    }

    /// Stores `data`, the state machine as of `last_applied`, as the group's snapshot.
    pub fn save<C: GroupTypes>(
        &self,
        last_applied: Option<LogId<u64>>,
        last_membership: StoredMembership<u64, ClusterNode>,
        data: Vec<u8>,
    ) -> Result<Snapshot<C>, StorageError<u64>> {
        let built = self.built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{built}", id.leader_id, id.index),
            None => format!("--{built}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        self.save_received(&meta, &data)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    /// Stores a snapshot the leader sent (once the state machine has installed it).
    pub fn save_received(
        &self,
        meta: &SnapshotMeta<u64, ClusterNode>,
        data: &[u8],
    ) -> Result<(), StorageError<u64>> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            meta: &'a SnapshotMeta<u64, ClusterNode>,
            data: &'a [u8],
        }
        self.db
            .put_meta(SNAPSHOT, &Borrowed { meta, data }, true)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }

    /// The group's last snapshot, if it has one.
    pub fn current<C: GroupTypes>(&self) -> Result<Option<Snapshot<C>>, StorageError<u64>> {
        let stored: Option<StoredSnapshot> = self
            .db
            .meta(SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }

    /// The state machine's bytes in the last snapshot, to restore it at start.
    pub fn current_data(&self) -> Result<Option<Vec<u8>>, std::io::Error> {
        let stored: Option<StoredSnapshot> = self.db.meta(SNAPSHOT)?;
        Ok(stored.map(|stored| stored.data))
    }
}

//! A group's Raft log, vote and committed id in RocksDB.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote,
};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::{GroupTypes, LOGS, RaftDb};

type StoreResult<T> = Result<T, StorageError<u64>>;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// A group's log store; clones share the database (a clone is the log reader).
#[derive(Debug)]
pub struct LogStore<C> {
    db: RaftDb,
    group: PhantomData<C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            db: self.db.clone(),
            group: PhantomData,
        }
    }
}

impl<C: GroupTypes> LogStore<C> {
    /// The log store of the group whose database is `db`.
    pub fn new(db: RaftDb) -> Self {
        LogStore {
            db,
            group: PhantomData,
        }
    }

    fn last_entry_id(&self) -> Result<Option<LogId<u64>>, std::io::Error> {
        let family = self.db.family(LOGS)?;
        match self.db.db.iterator_cf(&family, IteratorMode::End).next() {
            Some(item) => {
                let (_, value) = item.map_err(std::io::Error::other)?;
                let entry: Entry<C> =
                    serde_json::from_slice(&value).map_err(std::io::Error::other)?;
                Ok(Some(*entry.get_log_id()))
            }
            None => Ok(None),
        }
    }

    /// Deletes the entries with index in `from..to`, durably.
    fn delete_range(&self, from: u64, to: u64) -> Result<(), std::io::Error> {
        let family = self.db.family(LOGS)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&family, from.to_be_bytes(), to.to_be_bytes());
        self.db
            .db
            .write_opt(batch, &durable())
            .map_err(std::io::Error::other)
    }
}

/// Writes that must be on disk before Raft is told they are: votes, appends, truncations.
fn durable() -> rocksdb::WriteOptions {
    let mut options = rocksdb::WriteOptions::default();
    options.set_sync(true);
    options
}

impl<C: GroupTypes> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<C>>> {
        let start = match range.start_bound() {
            Bound::Included(&index) => index,
            Bound::Excluded(&index) => index.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let read = || -> Result<Vec<Entry<C>>, std::io::Error> {
            let family = self.db.family(LOGS)?;
            let mut entries = Vec::new();
            let from = start.to_be_bytes();
            for item in self
                .db
                .db
                .iterator_cf(&family, IteratorMode::From(&from, Direction::Forward))
            {
                let (key, value) = item.map_err(std::io::Error::other)?;
                let index = u64::from_be_bytes(
                    key.as_ref()
                        .try_into()
                        .map_err(|_| std::io::Error::other("a log key is not 8 bytes"))?,
                );
                if !range.contains(&index) {
                    break;
                }
                entries.push(serde_json::from_slice(&value).map_err(std::io::Error::other)?);
            }
            Ok(entries)
        };
        read().map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl<C: GroupTypes> RaftLogStorage<C> for LogStore<C> {
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> StoreResult<LogState<C>> {
        let last_purged: Option<LogId<u64>> = self
            .db
            .meta(LAST_PURGED)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last = self
            .last_entry_id()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StoreResult<()> {
        self.db
            .put_meta(VOTE, vote, true)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<u64>>> {
        self.db
            .meta(VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StoreResult<()> {
        self.db
            .put_meta(COMMITTED, &committed, true)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<u64>>> {
        self.db
            .meta::<Option<LogId<u64>>>(COMMITTED)
            .map(Option::flatten)
            .map_err(|e| StorageIOError::read(&e).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<C>> + Send,
        I::IntoIter: Send,
    {
        let write = || -> Result<(), std::io::Error> {
            let family = self.db.family(LOGS)?;
            let mut batch = WriteBatch::default();
            for entry in entries {
                let value = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
                batch.put_cf(&family, entry.get_log_id().index.to_be_bytes(), value);
            }
            // Synced before the callback: an append is acknowledged only once it is durable.
            self.db
                .db
                .write_opt(batch, &durable())
                .map_err(std::io::Error::other)
        };
        let written = write();
        let reported = written
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(reported);
        written.map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        self.delete_range(log_id.index, u64::MAX)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        // The purge mark goes first: a crash in between leaves entries below it, which are
        // never read, rather than a gap that claims entries exist.
        self.db
            .put_meta(LAST_PURGED, &log_id, true)
            .and_then(|()| self.delete_range(0, log_id.index.saturating_add(1)))
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError};

use super::*;

struct RocksDbBuilder;

impl StoreBuilder<CatalogRaft, LogStore, StateMachineStore, tempfile::TempDir> for RocksDbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let (log, state_machine) =
            open(dir.path()).map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, log, state_machine))
    }
}

/// openraft's own storage test suite: log state, votes, truncation, purge, membership,
/// snapshots.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(RocksDbBuilder).unwrap();
}

fn entry(index: u64, command: CatalogCommand) -> Entry<CatalogRaft> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

/// Catalog commands applied through Raft build the same catalog as the local log, a snapshot
/// restores it after a restart, and a refused command is reported without changing anything.
#[tokio::test]
async fn commands_apply_to_the_catalog_and_survive_a_restart_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut state_machine) = open(dir.path()).unwrap();
        let create = CatalogCommand::CreateUser {
            name: "alice".into(),
            superuser: false,
            password: None,
            connection_limit: None,
        };
        let outcomes = state_machine
            .apply([entry(1, create.clone()), entry(2, create)])
            .await
            .unwrap();
        assert_eq!(outcomes[0], Ok(Applied::Nothing));
        assert_eq!(
            outcomes[1],
            Err("role \"alice\" already exists".to_string())
        );
        let snapshot = state_machine.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(2));
    }
    let (_log, mut state_machine) = open(dir.path()).unwrap();
    assert!(state_machine.catalog().user("alice").is_some());
    let (applied, _) = state_machine.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(2));
}
